"""/metrics on edge, router and engine move as they should; one JSON access-log line per
request at the edge."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from devstack.processes import free_port
from tests.conftest import SCRIPTED_MODEL, RunningStack

N = 3
MAX_TOKENS = 4


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def _get(samples: dict, name: str, **labels: str) -> float:
    return sum(
        v
        for (n, ls), v in samples.items()
        if n == name and all(dict(ls).get(k) == val for k, val in labels.items())
    )


async def _requests(base_url: str, n: int) -> list[str]:
    ids = []
    body = {
        "model": SCRIPTED_MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": MAX_TOKENS,
        "stream": True,
    }
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            async with session.post(f"{base_url}/chat/completions", json=body) as r:
                assert r.status == 200
                await r.read()
                ids.append(r.headers["X-Request-Id"])
        async with session.post(f"{base_url}/chat/completions", json={"model": "x"}) as r:
            assert r.status == 400
    return ids


async def test_metrics_move_and_access_log(scripted_stack) -> None:  # type: ignore[no-untyped-def]
    # Long on purpose: one stack, one request, then every service's metrics and the log line.
    router_metrics, engine_metrics = free_port(), free_port()
    stack: RunningStack = scripted_stack(
        behaviour={"tokens_per_second": 100},  # one token per message
        router_args=["--metrics-port", str(router_metrics)],
        per_engine_args=[["--metrics-port", str(engine_metrics)]],
    )
    edge_url = stack.ops_url + "/metrics"
    router_url = f"http://127.0.0.1:{router_metrics}/metrics"
    engine_url = f"http://127.0.0.1:{engine_metrics}/metrics"
    before = {u: _scrape(u) for u in (edge_url, router_url, engine_url)}
    request_ids = await _requests(stack.base_url, N)
    after = {u: _scrape(u) for u in (edge_url, router_url, engine_url)}

    def delta(url: str, name: str, **labels: str) -> float:
        return _get(after[url], name, **labels) - _get(before[url], name, **labels)

    chat = "/v1/chat/completions"
    assert (
        delta(
            edge_url, "tera_edge_requests_total", endpoint=chat, status="200", model=SCRIPTED_MODEL
        )
        == N
    )
    assert delta(edge_url, "tera_edge_requests_total", endpoint=chat, status="400") == 1
    assert delta(edge_url, "tera_edge_time_to_first_token_seconds_count", model=SCRIPTED_MODEL) == N
    # One gap per message after the first: a busy machine may put two tokens in one.
    gaps = delta(edge_url, "tera_edge_inter_token_latency_seconds_count", model=SCRIPTED_MODEL)
    assert N <= gaps <= N * (MAX_TOKENS - 1)
    assert delta(edge_url, "tera_edge_tokens_total", kind="completion") == N * MAX_TOKENS
    assert delta(edge_url, "tera_edge_tokens_total", kind="prompt") > 0
    assert _get(after[edge_url], "tera_edge_in_flight", endpoint=chat) == 0
    assert delta(router_url, "tera_router_requests_total", model=SCRIPTED_MODEL, code="OK") == N
    assert _get(after[router_url], "tera_router_replica_up") == 1
    assert delta(engine_url, "tera_engine_admitted_total") == N
    assert _get(after[engine_url], "tera_engine_in_flight") == 0

    log = Path(stack.stack.plan.log_dir / "edge.log").read_text()  # type: ignore[operator]
    lines = [
        json.loads(line.split("tera.access: ", 1)[1])
        for line in log.splitlines()
        if "tera.access: " in line
    ]
    records = {r["request_id"]: r for r in lines}
    for request_id in request_ids:
        record = records[request_id]
        assert record["status"] == 200 and record["model"] == SCRIPTED_MODEL
        assert record["completion_tokens"] == MAX_TOKENS and record["prompt_tokens"] > 0
        assert record["ttft_ms"] >= 0 and record["duration_ms"] >= record["ttft_ms"]
        assert "trace_id" in record
    assert sum(1 for r in lines if r["status"] == 400) == 1


async def test_exemplars_carry_trace_ids(scripted_stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.observability.otlp_receiver import OtlpReceiver

    with OtlpReceiver() as receiver:
        stack: RunningStack = scripted_stack(env=receiver.env)
        await _requests(stack.base_url, 1)
        request = urllib.request.Request(
            stack.ops_url + "/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        )
        text = urllib.request.urlopen(request, timeout=5).read().decode()
    ttft = [
        line
        for line in text.splitlines()
        if line.startswith("tera_edge_time_to_first_token_seconds_bucket") and "#" in line
    ]
    assert ttft and 'trace_id="' in ttft[0]


async def test_every_service_freezes_its_start_up_heap(scripted_stack) -> None:  # type: ignore[no-untyped-def]
    # What each full collection would otherwise walk: tens of thousands of objects in the
    # smallest of them (the scripted engine), which no serving request ever frees.
    router_metrics, engine_metrics = free_port(), free_port()
    stack: RunningStack = scripted_stack(
        router_args=["--metrics-port", str(router_metrics)],
        per_engine_args=[["--metrics-port", str(engine_metrics)]],
    )
    await _requests(stack.base_url, 1)
    for url in (
        stack.ops_url + "/metrics",
        f"http://127.0.0.1:{router_metrics}/metrics",
        f"http://127.0.0.1:{engine_metrics}/metrics",
    ):
        samples = _scrape(url)
        assert _get(samples, "tera_gc_frozen_objects") > 20_000, url
        # At least the freeze's own full collection, timed.
        assert _get(samples, "tera_gc_pause_seconds_count", generation="2") >= 1, url
        assert _get(samples, "tera_gc_pause_seconds_sum", generation="2") > 0, url
