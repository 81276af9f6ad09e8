"""Part: hedged first tokens with one slow replica. Two stand-in replicas, one 2 s late
with every first token; the same load with hedging off, with the default settings
(adaptive delay, 5 % budget) and with a budget for every request and a 0.5 s ceiling.
Reported per setting: p50 and p99 time to first token at the client, and the extra
load, hedges per request."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.common import STAND_IN_MODEL, percentile
from devstack.engine_args import scripted_engine_args
from devstack.processes import free_port
from devstack.stack import Stack, StackPlan

SLOW_FIRST_TOKEN_S = 2.0
REQUESTS = 200
CONCURRENCY = 8
# Load-aware policies learn to avoid a replica that is slow and busy; round robin stands
# for a replica whose slowness load does not show (a slow node, a stuck prefill).
POLICY = "round_robin"
SETTINGS = {
    "off": {"enabled": False},
    "default (adaptive, 5 % budget)": {},
    "budget 100 %, ceiling 0.5 s": {"budget_ratio": 1.0, "ceiling_s": 0.5},
}


def run(results: Path) -> list[dict]:
    settings = enumerate(SETTINGS.items())
    return [_one(results / f"hedging-{i}", name, hedge) for i, (name, hedge) in settings]


def _one(logs: Path, name: str, hedge: dict) -> dict:
    logs.mkdir(parents=True, exist_ok=True)
    config = logs / "router.yaml"
    config.write_text(json.dumps({"policy": POLICY, "hedge": hedge}))
    metrics_port = free_port()
    behaviours = [{"first_token_delay_s": SLOW_FIRST_TOKEN_S}, {}]
    plan = StackPlan(
        edge_port=free_port(),
        router_port=free_port(),
        engine_ports=[free_port() for _ in behaviours],
        per_engine_args=[scripted_engine_args(STAND_IN_MODEL, **b) for b in behaviours],
        model_ids=[STAND_IN_MODEL],
        router_args=["--config", str(config), "--metrics-port", str(metrics_port)],
        log_dir=logs,
    )
    stack = Stack(plan).start(timeout_s=60)
    try:
        times = asyncio.run(_first_token_times(plan.base_url))
        counts = _hedge_counts(metrics_port)
    finally:
        stack.stop()
    return {
        "setting": name,
        "requests": REQUESTS,
        "p50_ttft_ms": percentile(times, 50) * 1000,
        "p99_ttft_ms": percentile(times, 99) * 1000,
        "hedges_per_request": counts["tera_router_hedges_total"] / REQUESTS,
        "hedge_wins": counts["tera_router_hedge_wins_total"],
    }


async def _first_token_times(base_url: str) -> list[float]:
    gate = asyncio.Semaphore(CONCURRENCY)
    body = {"model": STAND_IN_MODEL, "messages": [{"role": "user", "content": "Hi"}]}
    body |= {"max_tokens": 4, "stream": True}

    async def one(session: aiohttp.ClientSession) -> float:
        async with gate:
            started = time.monotonic()  # the edge holds the 200 until the first token
            async with session.post(f"{base_url}/chat/completions", json=body) as response:
                await response.content.readline()
                first = time.monotonic() - started
                await response.read()
                return first

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        return list(await asyncio.gather(*(one(session) for _ in range(REQUESTS))))


def _hedge_counts(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    counts = {"tera_router_hedges_total": 0.0, "tera_router_hedge_wins_total": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in counts:
                counts[sample.name] += sample.value
    return counts
