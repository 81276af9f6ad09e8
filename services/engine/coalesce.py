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


class _Inbox:
    """What the producer has handed over and the consumer has not yet sent.

    The producer only wakes the consumer when it is idle-waiting, so tokens that arrive
    while a window is being held cost a list append, not a task switch each.
    """

    def __init__(self) -> None:
        self.items: list[pb.GenerateResponse] = []
        self.ended = False
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def put(self, message: pb.GenerateResponse) -> None:
        self.items.append(message)
        self._wake()

    def close(self, error: BaseException | None = None) -> None:
        self.ended, self.error = True, error
        self._wake()

    async def wait(self) -> None:
        if self.items or self.ended:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def take(self) -> list[pb.GenerateResponse]:
        items, self.items = self.items, []
        return items

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


async def coalesce(
    stream: AsyncIterator[pb.GenerateResponse], window_s: float
) -> AsyncIterator[pb.GenerateResponse]:
    if window_s <= 0:
        async for message in stream:
            yield message
        return
    inbox = _Inbox()
    pump = asyncio.create_task(_pump(stream, inbox))
    loop = asyncio.get_running_loop()
    last_sent = float("-inf")
    try:
        while True:
            await inbox.wait()
            if (hold := last_sent + window_s - loop.time()) > 0 and not inbox.ended:
                await asyncio.sleep(hold)  # what arrives meanwhile joins this message
            if batch := inbox.take():
                yield merge(batch)
                last_sent = loop.time()
            if inbox.ended and not inbox.items:
                if inbox.error is not None:
                    raise inbox.error
                return
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump


async def _pump(stream: AsyncIterator[pb.GenerateResponse], inbox: _Inbox) -> None:
    try:
        async for message in stream:
            inbox.put(message)
    except Exception as exc:  # handed to the consumer, which re-raises it after the batch
        inbox.close(exc)
    else:
        inbox.close()


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
