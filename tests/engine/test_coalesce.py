"""Token coalescing: the first delta goes at once; fast deltas merge; slow ones don't wait."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest

from services.engine.coalesce import coalesce, merge
from services.proto_gen.tera.v1 import engine_pb2 as pb


def delta(text: str, finish: int = 0, usage: bool = False) -> pb.GenerateResponse:
    msg = pb.GenerateResponse(
        choices=[pb.ChoiceDelta(index=0, text=text, num_tokens=1, finish_reason=finish)]
    )
    if usage:
        msg.usage.CopyFrom(pb.Usage(prompt_tokens=3, completion_tokens=4))
    return msg


async def source(
    items: list[pb.GenerateResponse], gap_s: float
) -> AsyncIterator[pb.GenerateResponse]:
    for item in items:
        yield item
        await asyncio.sleep(gap_s)


ITEMS = [delta("a"), delta("b"), delta("c"), delta("d", pb.FINISH_REASON_STOP, usage=True)]


async def test_off_passes_through() -> None:
    out = [m async for m in coalesce(source(ITEMS, 0), 0)]
    assert out == ITEMS


async def test_fast_deltas_merge_but_first_goes_alone() -> None:
    out = [m async for m in coalesce(source(ITEMS, 0.001), 0.05)]
    assert out[0].choices[0].text == "a"
    assert "".join(m.choices[0].text for m in out) == "abcd"
    assert len(out) < len(ITEMS)
    assert out[-1].choices[0].finish_reason == pb.FINISH_REASON_STOP
    assert out[-1].usage.completion_tokens == 4
    assert sum(c.num_tokens for m in out for c in m.choices) == 4


async def test_slow_deltas_are_not_held() -> None:
    out = [m async for m in coalesce(source(ITEMS, 0.03), 0.005)]
    assert [m.choices[0].text for m in out] == ["a", "b", "c", "d"]


async def test_error_after_deltas_still_delivers_them() -> None:
    async def failing() -> AsyncIterator[pb.GenerateResponse]:
        yield delta("a")
        yield delta("b")
        raise RuntimeError("boom")

    received = []
    with pytest.raises(RuntimeError, match="boom"):
        async for m in coalesce(failing(), 0.05):
            received.append(m)
    assert "".join(m.choices[0].text for m in received) == "ab"


def test_merge_joins_tool_call_arguments() -> None:
    first = pb.GenerateResponse(
        choices=[
            pb.ChoiceDelta(
                index=0,
                tool_calls=[pb.ToolCallDelta(index=0, id="call_1", name="f", arguments='{"a"')],
            )
        ]
    )
    second = pb.GenerateResponse(
        choices=[pb.ChoiceDelta(index=0, tool_calls=[pb.ToolCallDelta(index=0, arguments=": 1}")])]
    )
    merged = merge([first, second])
    (call,) = merged.choices[0].tool_calls
    assert (call.id, call.name, call.arguments) == ("call_1", "f", '{"a": 1}')


async def _timed(
    stream: AsyncIterator[pb.GenerateResponse],
) -> list[tuple[float, pb.GenerateResponse]]:
    loop = asyncio.get_running_loop()
    return [(loop.time(), m) async for m in coalesce(stream, 0.010)]


async def test_sends_ride_on_arrivals_so_the_newest_token_is_not_held() -> None:
    """A steady 4 ms step with a 10 ms window: messages go out when a step arrives,
    not on a timer out of phase with the steps."""
    loop = asyncio.get_running_loop()
    sent_at: dict[str, float] = {}

    async def steps() -> AsyncIterator[pb.GenerateResponse]:
        for i in range(40):
            sent_at[f"t{i} "] = loop.time()
            yield delta(f"t{i} ")
            await asyncio.sleep(0.004)

    out = await _timed(steps())
    # On a busy machine the 4 ms sleeps stretch: merging is asked for only when the
    # steps, as measured, came faster than the window.
    times = sorted(sent_at.values())
    gaps = sorted(b - a for a, b in itertools.pairwise(times))
    if gaps[len(gaps) // 2] < 0.006:
        assert len(out) < 35, "merged"
    newest_held_ms = [
        (at - sent_at[m.choices[0].text.split(" ")[-2] + " "]) * 1000 for at, m in out
    ]
    # Typically under 1 ms; held for the window it would be about 10 ms.
    assert sorted(newest_held_ms)[len(newest_held_ms) // 2] < 5.0, newest_held_ms


async def test_a_pause_does_not_hold_tokens_beyond_the_window() -> None:
    loop = asyncio.get_running_loop()

    async def burst_then_pause() -> AsyncIterator[pb.GenerateResponse]:
        yield delta("a")
        yield delta("b")
        await asyncio.sleep(0.2)
        yield delta("c")

    started = loop.time()
    out = await _timed(burst_then_pause())
    assert "".join(m.choices[0].text for _, m in out) == "abc"
    b_sent = next(at for at, m in out if "b" in m.choices[0].text)
    assert b_sent - started < 0.1  # sent when its window ran out, not with "c"
