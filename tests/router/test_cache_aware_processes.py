"""cache_aware with real processes: three stand-in engines with simulated prefix caches
behind a router. Which engine served a call: the one whose admitted count moved."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import yaml

from devstack.prefix_client import call_metadata, chat, engine_totals, generate
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc
from tests.conftest import SCRIPTED_MODEL, RunningStack

ROUTER = {
    "policy": "cache_aware",
    "policy_options": {"cache_aware": {"load_margin": 2, "load_factor": 1.5}},
    "health": {"check_interval_s": 0.2, "check_timeout_s": 0.5, "load_poll_interval_s": 0.2},
    "hedge": {"enabled": False},
}
CACHE = {"prefix_cache_chunks": 24}  # 384 tokens per engine


def _system(group: str, words: int = 64) -> tuple[str, str]:
    return ("system", " ".join(f"{group}{i}" for i in range(words)))


def _start(scripted_stack: Callable[..., RunningStack], tmp_path: Path, **cache: object):
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump(ROUTER))
    return scripted_stack(
        engines=3, behaviour={**CACHE, **cache}, router_args=["--config", str(config)]
    )


def _router(stack: RunningStack) -> str:
    return f"{stack.stack.plan.host}:{stack.stack.plan.router_port}"


async def _served_by(stack: RunningStack, turns: list[tuple[str, str]]) -> tuple[int, int]:
    """(index of the engine that served it, its cached tokens), routed by the router."""
    before = engine_totals(stack.engine_addresses)
    request = chat(SCRIPTED_MODEL, turns)
    async with grpc.aio.insecure_channel(_router(stack)) as channel:
        outcome = await generate(pb_grpc.EngineStub(channel), request)
    after = engine_totals(stack.engine_addresses)
    (served,) = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if b > a]
    return served, outcome.cached_tokens


async def _prime(stack: RunningStack, engine: int, turns: list[tuple[str, str]]) -> None:
    """Serves a call on one engine directly, so its cache holds the prompt."""
    request = chat(SCRIPTED_MODEL, turns)
    async with grpc.aio.insecure_channel(stack.engine_addresses[engine]) as channel:
        await generate(pb_grpc.EngineStub(channel), request)
    await asyncio.sleep(0.3)  # the engine's event reaches the router


async def test_calls_land_where_their_prefix_is_resident(scripted_stack, tmp_path) -> None:
    stack = _start(scripted_stack, tmp_path)
    await asyncio.sleep(0.5)
    for engine, group in enumerate("abc"):
        await _prime(stack, engine, [_system(group), ("user", "hello there")])
    for engine, group in enumerate("abc"):
        served, cached = await _served_by(stack, [_system(group), ("user", "another question")])
        assert served == engine, f"group {group} went to engine {served}, not {engine}"
        assert cached >= 64


async def test_an_eviction_is_noticed(scripted_stack, tmp_path) -> None:
    stack = _start(scripted_stack, tmp_path)
    await asyncio.sleep(0.5)
    long_turns = [_system("g", 96), ("user", "x")]
    await _prime(stack, 0, long_turns)  # engine 0 holds 6 chunks of the prefix
    await _prime(stack, 1, [_system("g", 48)])  # engine 1 holds 3
    assert (await _served_by(stack, long_turns))[0] == 0
    for flood in range(3):  # 3 x 8 other chunks evict all of engine 0's
        await _prime(stack, 0, [_system(f"f{flood}", 128)])
    served, cached = await _served_by(stack, long_turns)
    assert served == 1 and cached == 48


async def test_a_flood_of_one_prefix_spreads(scripted_stack, tmp_path) -> None:
    # Slow streams, so the calls are all in flight together.
    stack = _start(scripted_stack, tmp_path, tokens_per_second=20)
    await asyncio.sleep(0.5)
    turns = [_system("hot"), ("user", "same again")]
    request = chat(SCRIPTED_MODEL, turns, max_tokens=20)
    before = engine_totals(stack.engine_addresses)
    async with grpc.aio.insecure_channel(_router(stack)) as channel:
        stub = pb_grpc.EngineStub(channel)
        calls = []
        for _ in range(24):
            calls.append(asyncio.create_task(generate(stub, request, call_metadata(request))))
            await asyncio.sleep(0.02)
        await asyncio.gather(*calls)
    shares = [b - a for a, b in zip(before, engine_totals(stack.engine_addresses), strict=True)]
    assert sum(shares) == 24
    assert max(shares) <= 12, f"a hot spot: {shares}"
