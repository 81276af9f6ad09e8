"""Token coalescing: merge deltas that arrive faster than a small window.

The first message goes out at once. After a send, anything arriving within the window
is held and sent together at the window's end, so a fast stream costs one message (and
one SSE chunk at the edge) per window instead of one per token. A slow stream, whose
tokens are further apart than the window, is never delayed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from services.proto_gen.tera.v1 import engine_pb2 as pb

_END = object()


async def coalesce(
    stream: AsyncIterator[pb.GenerateResponse], window_s: float
) -> AsyncIterator[pb.GenerateResponse]:
    if window_s <= 0:
        async for message in stream:
            yield message
        return
    queue: asyncio.Queue[object] = asyncio.Queue()
    pump = asyncio.create_task(_pump(stream, queue))
    loop = asyncio.get_running_loop()
    last_sent = float("-inf")
    try:
        while True:
            item = await queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            batch = [item]
            ended = await _collect(queue, batch, hold_until=last_sent + window_s)
            yield merge(batch)  # type: ignore[arg-type]
            last_sent = loop.time()
            if ended:
                return
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump


async def _pump(stream: AsyncIterator[pb.GenerateResponse], queue: asyncio.Queue[object]) -> None:
    try:
        async for message in stream:
            queue.put_nowait(message)
        queue.put_nowait(_END)
    except Exception as exc:  # handed to the consumer, which re-raises it
        queue.put_nowait(exc)


async def _collect(queue: asyncio.Queue[object], batch: list[object], hold_until: float) -> bool:
    """Adds to batch what arrives before hold_until; True if the stream ended meanwhile."""
    loop = asyncio.get_running_loop()
    while (remaining := hold_until - loop.time()) > 0:
        try:
            item = await asyncio.wait_for(queue.get(), remaining)
        except TimeoutError:
            break
        if item is _END:
            return True
        if isinstance(item, BaseException):
            queue.put_nowait(item)  # send what we have; the error follows
            break
        batch.append(item)
    return False


def merge(messages: list[pb.GenerateResponse]) -> pb.GenerateResponse:
    if len(messages) == 1:
        return messages[0]
    merged = pb.GenerateResponse()
    by_index: dict[int, pb.ChoiceDelta] = {}
    for message in messages:
        for delta in message.choices:
            target = by_index.get(delta.index)
            if target is None:
                by_index[delta.index] = target = merged.choices.add(index=delta.index)
            _merge_choice(target, delta)
        if message.HasField("usage"):
            merged.usage.CopyFrom(message.usage)
        if message.HasField("timings"):
            merged.timings.CopyFrom(message.timings)
    return merged


def _merge_choice(target: pb.ChoiceDelta, delta: pb.ChoiceDelta) -> None:
    target.text += delta.text
    target.reasoning_text += delta.reasoning_text
    target.num_tokens += delta.num_tokens
    target.logprobs.extend(delta.logprobs)
    if delta.finish_reason:
        target.finish_reason = delta.finish_reason
    for call in delta.tool_calls:
        existing = next((c for c in target.tool_calls if c.index == call.index), None)
        if existing is None:
            target.tool_calls.append(call)
        else:
            existing.arguments += call.arguments
