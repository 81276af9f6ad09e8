"""The stand-in's shared decode clock: with a step as long as a stream's token interval
(a GPU step gives every running stream one token), each message carries one token, as
the relay benchmark's "one token a message" figures need."""

from __future__ import annotations

import asyncio
import math
import statistics

import pytest

from services.engine.backends.scripted import ScriptedBackend, shared_tick
from services.engine.config import EngineConfig, ScriptedOptions
from services.proto_gen.tera.v1 import engine_pb2 as pb

STEP_MS = 20.0
TOKENS = 15


async def _tokens_per_message(backend: ScriptedBackend) -> list[int]:
    request = pb.GenerateRequest(
        prompt=pb.PromptInput(text="go"), sampling=pb.SamplingParams(max_tokens=TOKENS)
    )
    counts = []
    async for message in backend.generate(request):
        text = "".join(choice.text for choice in message.choices)
        if text:
            counts.append(text.count("tok"))
    assert sum(counts) == TOKENS
    return counts


async def test_a_step_as_long_as_the_token_interval_sends_one_token_a_message() -> None:
    script = ScriptedOptions(tokens_per_second=1000 / STEP_MS, step_ms=STEP_MS, shared_steps=True)
    backend = ScriptedBackend(EngineConfig(backend="scripted", scripted=script))
    streams = await asyncio.gather(*(_tokens_per_message(backend) for _ in range(4)))
    counts = [n for stream in streams for n in stream]
    # A loaded machine may wake a stream a whole step late (two tokens then); a clock that
    # skips a tick after every slightly late wake-up sends two in most messages.
    assert statistics.median(counts) == 1
    assert sum(n == 1 for n in counts) >= 0.75 * len(counts)


def test_a_token_due_on_a_tick_is_sent_at_that_tick() -> None:
    # 0.07 / 0.01 is 7.000000000000001 in floats: rounded up, the 70 ms tick was skipped.
    assert shared_tick(0.0601, next_due=0.07, step_s=0.01) == pytest.approx(0.07)
    assert shared_tick(0.0701, next_due=0.07, step_s=0.01) == pytest.approx(0.08)
    # A wake-up a moment late still gets the next tick, not the one after.
    assert shared_tick(0.0802, next_due=0.075, step_s=0.01) == pytest.approx(0.09)
    # A stream slower than the clock waits for the tick at or after its token is due.
    assert shared_tick(0.0601, next_due=0.095, step_s=0.01) == pytest.approx(0.1)


class _LateLoop(asyncio.SelectorEventLoop):
    """Wakes every timer a millisecond late, as uvloop's millisecond timers can."""

    def call_at(self, when, callback, *args, context=None):  # type: ignore[no-untyped-def]
        return super().call_at(when + 0.001, callback, *args, context=context)


def test_streams_started_just_after_a_tick_still_get_one_token_a_step() -> None:
    step_s = STEP_MS / 1000
    script = ScriptedOptions(tokens_per_second=1 / step_s, step_ms=STEP_MS, shared_steps=True)
    backend = ScriptedBackend(EngineConfig(backend="scripted", scripted=script))

    async def run() -> list[int]:
        loop = asyncio.get_running_loop()
        tick = (math.floor(loop.time() / step_s) + 2) * step_s
        await asyncio.sleep(tick - 0.001 + 0.0002 - loop.time())  # 0.2 ms after a tick
        streams = await asyncio.gather(*(_tokens_per_message(backend) for _ in range(4)))
        return [n for stream in streams for n in stream]

    with asyncio.Runner(loop_factory=_LateLoop) as runner:
        counts = runner.run(run())
    # Counted from their own start, their tokens fell due 0.2 ms after each tick, and
    # every wake-up a millisecond late sent two.
    assert sum(n == 1 for n in counts) >= 0.9 * len(counts), counts
