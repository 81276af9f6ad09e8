"""The stand-in's shared decode clock: with a step as long as a stream's token interval
(a GPU step gives every running stream one token), each message carries one token, as
the relay benchmark's "one token a message" figures need."""

from __future__ import annotations

import asyncio
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
