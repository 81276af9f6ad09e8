"""Runs several upstream streams at once and yields their messages as they come."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

_DONE = object()


async def merge_streams(
    streams: list[AsyncIterator[object]],
) -> AsyncIterator[tuple[int, object]]:
    """Yields (stream index, message); the first failure cancels the rest and is raised."""
    if len(streams) == 1:
        try:
            async for message in streams[0]:
                yield 0, message
        finally:  # closing now, not at garbage collection, ends the upstream call at once
            await streams[0].aclose()  # type: ignore[attr-defined]
        return
    queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[object]) -> None:
        try:
            async for message in stream:
                queue.put_nowait((index, message))
            queue.put_nowait((index, _DONE))
        except Exception as exc:
            queue.put_nowait((index, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is _DONE:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for stream in streams:
            await stream.aclose()  # type: ignore[attr-defined]
