"""Part: what freezing the start-up heap changes (services/common/gc_heap.py).

Two GPU-shaped relays (edge + router + a stand-in stepping 100 times a second, one token
a message) run at once, one with TERA_GC_FREEZE=0 and one as shipped, and take steps of
STREAMS streams in turn (the first of each round alternating), so the host's drift falls
on both alike. Per arm: the full (generation 2) collections edge and router ran during the
steps and how long each stopped its process (`tera_gc_pause_seconds`, scraped around each
step), the relay's cores per 10,000 tok/s and the latency it added to a token (p99 within
each step, median over steps).
"""

from __future__ import annotations

import statistics
import urllib.request
from pathlib import Path

import uvloop
from prometheus_client.parser import text_string_to_metric_families

from bench import relay
from devstack.processes import free_port
from devstack.stack import Stack
from services.common.gc_heap import FREEZE_ENV

STREAMS = 128  # 51,200 tokens a step: a full collection every few steps in each process
ROUNDS = 12
ARMS = {"not frozen": "0", "frozen": "1"}
SERVICES = ("edge", "router")


def _start(results: Path, freeze: str) -> tuple[Stack, dict[str, str]]:
    router_metrics = free_port()
    stack = relay.relay_stack(
        results / f"gc-freeze-{freeze}",
        relay.GPU_SHAPED_RATE,
        0,
        step_ms=1000 / relay.GPU_SHAPED_RATE,
        env={FREEZE_ENV: freeze},
        router_args=["--metrics-port", str(router_metrics)],
        edge_ops=True,
    )
    urls = {"edge": stack.plan.ops_url, "router": f"http://127.0.0.1:{router_metrics}"}
    return stack, {name: f"{url}/metrics" for name, url in urls.items()}


def _full_collections(url: str) -> tuple[float, float]:
    """(collections, seconds stopped) of generation 2 so far."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    figures = {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("generation") == "2"
    }
    return figures["tera_gc_pause_seconds_count"], figures["tera_gc_pause_seconds_sum"]


def _step(stack: Stack, urls: dict[str, str], streams: int) -> dict:
    before = {name: _full_collections(url) for name, url in urls.items()}
    step = uvloop.run(relay._step(stack, streams, relay.GPU_SHAPED_RATE))
    row: dict = {
        "cores_per_10k": step.relay_cores_per_10k,
        "added_latency_p99_ms": step.added_latency_p99_ms,
        "tokens_per_message": step.tokens_per_chunk,
        "errors": step.errors,
    }
    for name, url in urls.items():
        count, seconds = _full_collections(url)
        row[f"{name}_collections"] = count - before[name][0]
        row[f"{name}_stopped_ms"] = (seconds - before[name][1]) * 1000
    return row


def run(results: Path, streams: int = STREAMS, rounds: int = ROUNDS) -> dict:
    stacks: dict[str, tuple[Stack, dict[str, str]]] = {}
    try:
        for arm, freeze in ARMS.items():
            stacks[arm] = _start(results, freeze)
            uvloop.run(relay._short_requests(stacks[arm][0], 16, 0.5))
        steps: dict[str, list[dict]] = {arm: [] for arm in ARMS}
        for r in range(rounds):
            for arm in list(ARMS)[:: 1 if r % 2 == 0 else -1]:
                steps[arm].append(_step(*stacks[arm], streams))
    finally:
        for stack, _ in stacks.values():
            stack.stop()
    return {
        "streams": streams,
        "rounds": rounds,
        "arms": [_summary(a, s) for a, s in steps.items()],
    }


def _summary(arm: str, steps: list[dict]) -> dict:
    row: dict = {"arm": arm, "steps": len(steps)}
    for name in SERVICES:
        count = sum(s[f"{name}_collections"] for s in steps)
        stopped = sum(s[f"{name}_stopped_ms"] for s in steps)
        row[f"{name} full collections"] = int(count)
        row[f"{name} ms a full collection"] = round(stopped / count, 1) if count else None
    row["cores per 10k tok/s (median)"] = round(
        statistics.median(s["cores_per_10k"] for s in steps), 3
    )
    row["added latency p99 ms (median)"] = round(
        statistics.median(s["added_latency_p99_ms"] for s in steps), 1
    )
    row["errors"] = sum(s["errors"] for s in steps)
    return row
