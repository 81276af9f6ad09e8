"""Hedged first tokens, with real processes: stand-in engines, one or all slowed.

Time to first token is measured at the client, through edge and router.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from devstack.processes import free_port
from tests.conftest import SCRIPTED_MODEL, RunningStack

SETTINGS = {
    "policy": "round_robin",  # half the primaries land on the slow replica
    "health": {"check_interval_s": 0.2, "check_timeout_s": 0.5, "load_poll_interval_s": 0.2},
}
# Adaptive delay: 0.5 s until 5 samples, then about the fast replica's p95, at least 0.2 s.
HEDGE_ON = {"floor_s": 0.2, "ceiling_s": 0.5, "min_samples": 5, "budget_ratio": 1.0}
SLOW, FAST = {"first_token_delay_s": 2.0}, {}

Fleet = Callable[..., RunningStack]


@pytest.fixture
def fleet(scripted_stack: Callable[..., RunningStack], tmp_path: Path) -> Fleet:
    def start(behaviours: list[dict], **router: object) -> RunningStack:
        config = tmp_path / "router.yaml"
        config.write_text(yaml.safe_dump({**SETTINGS, **router}))
        return scripted_stack(
            engines=len(behaviours),
            per_engine_args=[["--scripted", json.dumps(b)] for b in behaviours],
            router_args=["--config", str(config), "--metrics-port", str(free_port())],
        )

    return start


async def first_token_times(base_url: str, requests: int, concurrency: int) -> list[float]:
    """Seconds to the first content token of each request (each must then complete)."""
    gate = asyncio.Semaphore(concurrency)
    body = {"model": SCRIPTED_MODEL, "messages": [{"role": "user", "content": "Hi"}]}
    body |= {"max_tokens": 3, "stream": True}

    async def one(session: aiohttp.ClientSession) -> float:
        async with gate:
            return await first_token(session, time.monotonic())

    async def first_token(session: aiohttp.ClientSession, started: float) -> float:
        # The edge holds the 200 until the first token: time it from the request.
        async with session.post(f"{base_url}/chat/completions", json=body) as response:
            assert response.status == 200, await response.text()
            first, lines = None, []
            async for line in response.content:
                if first is None and b'"content":"tok' in line:
                    first = time.monotonic() - started
                lines.append(line)
            assert any(b"[DONE]" in line for line in lines[-2:]), lines
            assert first is not None
            return first

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        return list(await asyncio.gather(*(one(session) for _ in range(requests))))


def router_metric(stack: RunningStack, name: str) -> float:
    args = stack.stack.plan.router_args
    port = args[args.index("--metrics-port") + 1]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    return sum(s.value for s in samples if s.name == name and s.labels["model"] == SCRIPTED_MODEL)


def p99(times: list[float]) -> float:
    return sorted(times)[max(0, round(0.99 * len(times)) - 1)]


async def test_hedging_off_for_the_model_leaves_the_slow_replica_slow(fleet: Fleet) -> None:
    stack = fleet([SLOW, FAST], hedge=HEDGE_ON, model_hedges={SCRIPTED_MODEL: {"enabled": False}})
    times = await first_token_times(stack.base_url, requests=20, concurrency=4)
    slow = sum(t >= 1.9 for t in times)
    print(f"\n[hedge] off: p99 TTFT {p99(times):.2f} s, {slow}/20 at >= 2 s")
    assert slow >= 6, times  # about half went to the slow replica and waited
    assert router_metric(stack, "tera_router_hedges_total") == 0


async def test_hedging_cuts_p99_ttft_and_the_loser_is_aborted(fleet: Fleet) -> None:
    stack = fleet([SLOW, FAST], hedge=HEDGE_ON)
    load = asyncio.create_task(first_token_times(stack.base_url, requests=20, concurrency=4))
    await asyncio.sleep(0.3)
    busy = stack.engine_load(0).in_flight
    times = await load
    ended = time.monotonic()
    hedges = router_metric(stack, "tera_router_hedges_total")
    print(f"\n[hedge] on: p99 TTFT {p99(times):.2f} s, {hedges:.0f} hedges / 20 requests")
    assert p99(times) < 1.5, times
    assert hedges >= 5
    assert router_metric(stack, "tera_router_hedge_wins_total") >= 5
    assert router_metric(stack, "tera_router_hedge_cancelled_total") >= 5
    # The last slow attempt began < 0.6 s before the end and would hold its slot for 2 s
    # more: in-flight back to 0 well before then means the engine aborted it.
    assert busy >= 1, "the slow replica had calls in flight"
    while (in_flight := stack.engine_load(0).in_flight) and time.monotonic() - ended < 1.2:
        await asyncio.sleep(0.05)
    assert in_flight == 0, "the cancelled loser is still running inside the slow engine"


async def test_no_hedge_storm_when_every_replica_is_slow(fleet: Fleet) -> None:
    budget = {"delay_s": 0.1, "budget_ratio": 0.1, "budget_burst": 2}
    stack = fleet([{"first_token_delay_s": 1.0}] * 2, hedge=budget)
    requests = 30
    await first_token_times(stack.base_url, requests=requests, concurrency=10)
    hedges = router_metric(stack, "tera_router_hedges_total")
    print(f"\n[hedge] all slow: {hedges:.0f} hedges / {requests} requests")
    assert 1 <= hedges <= 2 + 0.1 * requests  # the burst plus 10 % of the requests
