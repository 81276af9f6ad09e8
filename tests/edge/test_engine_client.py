"""The edge's idle timeout between upstream messages, on a call that answers on cue.

One timer per stream now stands in for asyncio.timeout around each read; these check
what it must keep: only a read waiting past the limit ends the stream, however long the
stream or its caller's own pauses last. (The end-to-end case, a stream gone quiet behind
a real router, is in test_stream_failures.py.)"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from services.edge.engine_client import _IdleWatch, _relay
from services.edge.errors import OpenAIError

LIMIT_S = 0.2


class _CuedCall:
    """Sends its messages `gap_s` apart (the first after `first_gap_s`, if given), then
    EOF; or never again past `stall_after`."""

    def __init__(
        self,
        messages: int,
        gap_s: float,
        stall_after: int | None = None,
        first_gap_s: float | None = None,
    ) -> None:
        self._left = messages
        self._gap_s = gap_s
        self._first_gap_s = gap_s if first_gap_s is None else first_gap_s
        self._stall_after = stall_after
        self._sent = 0
        self._pending: asyncio.Task[None] | None = None
        self._cancelled = False

    async def read(self) -> object:
        if self._cancelled:  # as grpc's: a read on a locally cancelled call
            raise asyncio.CancelledError
        if self._left == 0:
            return grpc.aio.EOF
        wait = self._first_gap_s if self._sent == 0 else self._gap_s
        if self._sent == self._stall_after:
            wait = 3600.0
        self._pending = asyncio.ensure_future(asyncio.sleep(wait))
        await self._pending  # a cancelled call's pending read raises CancelledError
        self._left -= 1
        self._sent += 1
        return self._sent

    def cancel(self) -> None:
        self._cancelled = True
        if self._pending is not None:
            self._pending.cancel()


async def _drain(call: _CuedCall, pause_s: float = 0.0) -> list[object]:
    received = []
    async for message in _relay(call, LIMIT_S, known_model=True):  # type: ignore[arg-type]
        received.append(message)
        await asyncio.sleep(pause_s)  # the caller's own work, e.g. a slow client's drain
    return received


async def test_messages_inside_the_limit_never_time_out_however_long_the_stream() -> None:
    # 6 gaps of 0.6 x the limit: the stream outlasts the limit several times over.
    assert await _drain(_CuedCall(6, 0.6 * LIMIT_S)) == [1, 2, 3, 4, 5, 6]


async def test_the_callers_own_pauses_are_not_idle_time() -> None:
    assert await _drain(_CuedCall(3, 0.0), pause_s=2 * LIMIT_S) == [1, 2, 3]


async def test_the_wait_for_the_first_message_is_not_idle_time() -> None:
    # A long prefill or a deep queue: the router bounds this wait, not the idle limit.
    assert await _drain(_CuedCall(2, 0.0, first_gap_s=3 * LIMIT_S)) == [1, 2]


async def test_a_read_waiting_past_the_limit_ends_the_stream_with_504() -> None:
    call = _CuedCall(5, 0.0, stall_after=2)
    received: list[object] = []
    with pytest.raises(OpenAIError) as raised:
        async with asyncio.timeout(20 * LIMIT_S):  # a missed timeout fails, not hangs
            async for message in _relay(call, LIMIT_S, known_model=True):  # type: ignore[arg-type]
                received.append(message)
    assert received == [1, 2]
    assert raised.value.status == 504
    assert raised.value.body()["error"]["code"] == "stream_idle_timeout"


class _Cancellable:
    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


async def _keepalives(watch: _IdleWatch, for_s: float) -> None:
    for _ in range(round(for_s / (0.5 * LIMIT_S))):
        watch.alive()
        await asyncio.sleep(0.5 * LIMIT_S)


async def test_keepalives_between_messages_restart_the_idle_clock() -> None:
    # The router waits on a resumed stream's new replica: its keepalives, not messages.
    call = _Cancellable()
    watch = _IdleWatch(call, LIMIT_S)  # type: ignore[arg-type]
    watch.reading()
    await _keepalives(watch, 4 * LIMIT_S)
    assert not call.cancelled
    await asyncio.sleep(3 * LIMIT_S)  # and once they stop, the limit holds again
    assert call.cancelled and watch.expired
    watch.close()


async def test_keepalives_before_the_first_message_start_no_idle_clock() -> None:
    call = _Cancellable()
    watch = _IdleWatch(call, LIMIT_S)  # type: ignore[arg-type]
    await _keepalives(watch, 2 * LIMIT_S)
    await asyncio.sleep(3 * LIMIT_S)
    assert not call.cancelled  # the first message's wait is the router's to bound
    watch.close()
