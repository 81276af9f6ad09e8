"""Token coalescing: merge deltas that arrive faster than a small window.

The first message goes out at once. A delta that arrives less than a window after the
last send is held; the held deltas go out together with the first delta that arrives at
least 3/4 of a window after that send, or when the oldest of them has waited a whole
window (the stream slowed down or paused). A fast stream thus costs one message (and one SSE
chunk at the edge) per window instead of one per token, and a slow stream, whose tokens
are further apart than the window, is never delayed.

Sending on an arrival rather than on a timer matters: an engine emits once per decode
step, and a timer running out of phase with the steps would hold the newest token for a
varying part of a step, which clients see as inter-token jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from services.proto_gen.tera.v1 import engine_pb2 as pb

# Share of the window after which an arrival may close it (see `coalesce`).
_EARLY = 0.75


class _Inbox:
    """What the producer has handed over and the consumer has not yet sent."""

    def __init__(self) -> None:
        self.items: list[pb.GenerateResponse] = []
        self.oldest_at = 0.0  # loop time the oldest held item arrived
        self.ended = False
        self.error: BaseException | None = None
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, message: pb.GenerateResponse) -> None:
        if not self.items:
            self.oldest_at = self._loop.time()
        self.items.append(message)
        self._wake()

    def close(self, error: BaseException | None = None) -> None:
        self.ended, self.error = True, error
        self._wake()

    async def next_event(self, deadline: float | None = None) -> None:
        """Returns on the next put or close, or at deadline (loop time)."""
        self._waiter = waiter = self._loop.create_future()
        timer = None if deadline is None else self._loop.call_at(deadline, self._wake)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

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
            if not inbox.items and not inbox.ended:
                await inbox.next_event()
            now = loop.time()
            # An arrival a little early for the window still closes it: waiting for the
            # next one would hold this one for up to a whole step.
            due = now >= last_sent + _EARLY * window_s or now >= inbox.oldest_at + window_s
            if inbox.items and (due or inbox.ended):
                yield merge(inbox.take())
                last_sent = loop.time()
            elif inbox.items:  # hold until the next arrival, or the oldest's window ends
                await inbox.next_event(deadline=inbox.oldest_at + window_s)
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
