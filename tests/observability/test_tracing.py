"""One trace per request across edge, router and engine, exported over OTLP."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from devstack.engine_args import vllm_engine_args
from devstack.processes import free_port
from devstack.stack import Stack, StackPlan
from services.engine.model_prep import DEFAULT_MODEL_ID
from tests.conftest import CACHE_DIR, SCRIPTED_MODEL, RunningStack, scripted_args
from tests.observability.otlp_receiver import OtlpReceiver, ReceivedSpan, tree

KEY = "sk-tera-trace-secret-5d1f"
SERVER, CLIENT = 2, 3  # OTLP span kinds
SERVICES = {"tera-edge", "tera-router", "tera-engine"}
TREES: dict[str, str] = {}
ENGINE_METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def _stack(
    logs: Path,
    receiver: OtlpReceiver,
    engine_args: list[str],
    models: list[str],
    engines: int = 1,
    per_engine: list[list[str]] | None = None,
    router_args: tuple[str, ...] = ("--policy", "round_robin"),
    edge_args: tuple[str, ...] = (),
) -> Stack:
    plan = StackPlan(
        edge_port=free_port(),
        router_port=free_port(),
        engine_ports=[free_port() for _ in range(engines)],
        engine_args=engine_args,
        per_engine_args=per_engine or [],
        model_ids=models,
        router_args=list(router_args),
        edge_args=list(edge_args),
        env=receiver.env,
        edge_env={"TERA_API_KEYS": KEY},
        log_dir=logs,
    )
    return Stack(plan).start(timeout_s=240)


@pytest.fixture(scope="module")
def traced_vllm(
    model_dir: Path, receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStack]:
    args = [*vllm_engine_args(model_dir, CACHE_DIR), "--metrics-port", str(ENGINE_METRICS_PORT)]
    stack = _stack(tmp_path_factory.mktemp("traced-vllm"), receiver, args, [DEFAULT_MODEL_ID])
    try:
        yield RunningStack(stack)
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def traced_retry(
    receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStack]:
    """Two stand-in replicas; the first fails its first request before any token."""
    failing = scripted_args(fail_first_requests=1)
    healthy = scripted_args()
    stack = _stack(
        tmp_path_factory.mktemp("traced-retry"),
        receiver,
        [],
        [SCRIPTED_MODEL],
        engines=2,
        per_engine=[failing, healthy],
    )
    try:
        yield RunningStack(stack)
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def traced_hedge(
    receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStack]:
    """Two stand-in replicas; the first is 2 s late with its first token, so it is hedged."""
    logs = tmp_path_factory.mktemp("traced-hedge")
    config = logs / "router.yaml"
    config.write_text(json.dumps({"policy": "round_robin", "hedge": {"delay_s": 0.2}}))
    slow, fast = scripted_args(first_token_delay_s=2.0), scripted_args()
    stack = _stack(logs, receiver, [], [SCRIPTED_MODEL], 2, [slow, fast], ("--config", str(config)))
    try:
        yield RunningStack(stack)
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def traced_resume(
    receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStack]:
    """Two stand-in replicas that cut every call after 3 tokens: a 5-token stream is
    resumed once."""
    stack = _stack(
        tmp_path_factory.mktemp("traced-resume"),
        receiver,
        scripted_args(fail_after_tokens=3),
        [SCRIPTED_MODEL],
        engines=2,
    )
    try:
        yield RunningStack(stack)
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def traced_per_call(
    receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStack]:
    """traced_resume's fleet with both hops on plain calls (the edge's router_transport
    and the router's engine_transport: per_call; the default is stream)."""
    logs = tmp_path_factory.mktemp("traced-per-call")
    config = logs / "router.yaml"
    config.write_text(json.dumps({"policy": "round_robin", "engine_transport": "per_call"}))
    cutting = scripted_args(fail_after_tokens=3)
    router_args, edge_args = ("--config", str(config)), ("--router-transport", "per_call")
    stack = _stack(logs, receiver, cutting, [SCRIPTED_MODEL], 2, None, router_args, edge_args)
    try:
        yield RunningStack(stack)
    finally:
        stack.stop()


async def _chat(stack: RunningStack, model: str, trace_id: str) -> str:
    """Sends a request as part of the client's span; returns that span's id."""
    client_span = secrets.token_hex(8)
    headers = {
        "Authorization": f"Bearer {KEY}",
        "traceparent": f"00-{trace_id}-{client_span}-01",
    }
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 5,
        "temperature": 0.5,
        "stream": True,
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{stack.base_url}/chat/completions", json=body, headers=headers) as response,
    ):
        assert response.status == 200
        assert (await response.read()).endswith(b"data: [DONE]\n\n")
    return client_span


def _one(spans: list[ReceivedSpan], service: str, kind: int, name: str = "") -> ReceivedSpan:
    found = [s for s in spans if s.service == service and s.kind == kind and name in s.name]
    assert len(found) == 1, tree(spans)
    return found[0]


def _children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return [s for s in spans if s.parent_id == parent.span_id]


def _no_key_anywhere(spans: list[ReceivedSpan]) -> None:
    blob = json.dumps([s.attributes for s in spans], default=str)
    assert KEY not in blob and "Bearer" not in blob


async def test_streaming_request_is_one_trace(
    traced_vllm: RunningStack, receiver: OtlpReceiver
) -> None:
    trace_id = secrets.token_hex(16)  # the client's traceparent is honoured
    client_span = await _chat(traced_vllm, DEFAULT_MODEL_ID, trace_id)
    spans = receiver.wait_for(trace_id, SERVICES)
    TREES["streaming chat (vLLM)"] = tree(spans)

    http = _one(spans, "tera-edge", SERVER)
    assert http.parent_id == client_span, "the edge's span continues the client's"
    assert http.name.startswith("POST")
    assert http.attributes["gen_ai.request.model"] == DEFAULT_MODEL_ID
    assert http.attributes["gen_ai.request.max_tokens"] == 5
    assert http.attributes["gen_ai.request.temperature"] == 0.5
    assert http.attributes["gen_ai.usage.output_tokens"] == 5
    assert http.attributes["gen_ai.usage.input_tokens"] > 0
    assert http.attributes["gen_ai.response.finish_reasons"] == ["length"]
    assert http.attributes["tera.time_to_first_token_s"] > 0

    edge_call = _one(spans, "tera-edge", CLIENT)
    assert edge_call.parent_id == http.span_id
    router = _one(spans, "tera-router", SERVER)
    assert router.parent_id == edge_call.span_id
    (attempt,) = [s for s in _children(spans, router) if s.name == "attempt"]
    assert attempt.attributes["tera.attempt"] == 1
    assert attempt.attributes["tera.replica.address"] == traced_vllm.engine_addresses[0]
    router_call = _one(spans, "tera-router", CLIENT)
    assert router_call.parent_id == attempt.span_id
    engine = _one(spans, "tera-engine", SERVER, "Generate")
    assert engine.parent_id == router_call.span_id
    assert engine.attributes["gen_ai.usage.output_tokens"] == 5
    assert engine.attributes["tera.queue_time_s"] >= 0
    assert {"admitted", "first_token", "finished"} <= set(engine.events)
    # vLLM's own request span, under the engine's: what vLLM measured of it.
    vllm = _one(spans, "tera-engine", SERVER, "llm_request")
    assert vllm.parent_id == engine.span_id
    assert vllm.attributes["gen_ai.usage.completion_tokens"] == 5
    vllm_ttft = vllm.attributes["gen_ai.latency.time_to_first_token"]
    assert 0 < vllm_ttft < http.attributes["tera.time_to_first_token_s"]
    assert vllm.attributes["gen_ai.latency.time_in_queue"] >= 0
    _no_key_anywhere(spans)


async def test_retried_request_shows_each_attempt(
    traced_retry: RunningStack, receiver: OtlpReceiver
) -> None:
    # Round robin sends one of two requests to the replica that fails once.
    trace_ids = [secrets.token_hex(16), secrets.token_hex(16)]
    for trace_id in trace_ids:
        await _chat(traced_retry, SCRIPTED_MODEL, trace_id)
    traces = [receiver.wait_for(t, SERVICES) for t in trace_ids]
    spans = max(traces, key=lambda spans: sum(s.name == "attempt" for s in spans))
    TREES["retried request (stand-in engines)"] = tree(spans)
    router = _one(spans, "tera-router", SERVER)
    attempts = sorted(
        (s for s in _children(spans, router) if s.name == "attempt"),
        key=lambda s: s.attributes["tera.attempt"],
    )
    assert [a.attributes["tera.attempt"] for a in attempts] == [1, 2]
    failed, succeeded = attempts
    assert failed.attributes["tera.retry.reason"] == "INTERNAL"
    assert failed.status_code == 2  # ERROR
    assert "tera.retry.reason" not in succeeded.attributes
    assert failed.attributes["tera.replica.address"] != succeeded.attributes["tera.replica.address"]
    engines = [s for s in spans if s.service == "tera-engine" and s.kind == SERVER]
    assert len(engines) == 2  # both replicas appear, each under its attempt
    # Each attempt holds its own upstream call, and each engine's span hangs under it.
    under_attempts = []
    for attempt in attempts:
        (call,) = [c for c in _children(spans, attempt) if c.kind == CLIENT]
        (engine,) = _children(spans, call)
        assert engine.service == "tera-engine" and engine.kind == SERVER
        under_attempts.append(engine.span_id)
    assert sorted(under_attempts) == sorted(e.span_id for e in engines)
    _no_key_anywhere(spans)


async def test_hedge_is_its_own_attempt(traced_hedge: RunningStack, receiver: OtlpReceiver) -> None:
    # Round robin sends one of two requests to the slow replica; that one is hedged.
    trace_ids = [secrets.token_hex(16), secrets.token_hex(16)]
    for trace_id in trace_ids:
        await _chat(traced_hedge, SCRIPTED_MODEL, trace_id)
    traces = [receiver.wait_for(t, SERVICES) for t in trace_ids]
    spans = max(traces, key=lambda spans: sum(s.name == "attempt" for s in spans))
    TREES["hedged request (stand-in engines)"] = tree(spans)
    router = _one(spans, "tera-router", SERVER)
    attempts = [s for s in _children(spans, router) if s.name == "attempt"]
    hedged = {a.attributes["tera.attempt.hedge"]: a for a in attempts}
    assert len(attempts) == 2 and set(hedged) == {True, False}, tree(spans)
    assert [a.attributes["tera.attempt"] for a in attempts] == [1, 1]
    fast = traced_hedge.engine_addresses[1]
    assert hedged[True].attributes["tera.replica.address"] == fast


async def test_resumed_stream_shows_each_attempt(
    traced_resume: RunningStack, receiver: OtlpReceiver
) -> None:
    trace_id = secrets.token_hex(16)
    await _chat(traced_resume, SCRIPTED_MODEL, trace_id)
    spans = receiver.wait_for(trace_id, SERVICES)
    TREES["resumed stream (stand-in engines)"] = tree(spans)
    router = _one(spans, "tera-router", SERVER)
    cut, resumed = sorted(
        (s for s in _children(spans, router) if s.name == "attempt"),
        key=lambda s: s.attributes["tera.attempt"],
    )
    assert cut.attributes["tera.retry.reason"] == "INTERNAL" and cut.status_code == 2
    assert resumed.attributes["tera.resume.tokens"] == 3
    assert cut.attributes["tera.replica.address"] != resumed.attributes["tera.replica.address"]


Shape = list[tuple[object, ...]]


def _shape(spans: list[ReceivedSpan]) -> Shape:
    """Each span as service, kind, name (and a client span's rpc.* attributes: a server
    span's differ, the peer's address among them), under its parent's."""
    by_id = {s.span_id: s for s in spans}

    def own(span: ReceivedSpan | None) -> tuple[object, ...]:
        if span is None:
            return ()
        attributes = span.attributes.items() if span.kind == CLIENT else ()
        rpc = sorted((k, v) for k, v in attributes if k.startswith("rpc."))
        return (span.service, span.kind, span.name, *rpc)

    return sorted((own(by_id.get(s.parent_id)), own(s)) for s in spans)


async def test_both_transports_draw_the_same_tree(
    traced_resume: RunningStack, traced_per_call: RunningStack, receiver: OtlpReceiver
) -> None:
    """A resumed stream's trace over multiplexed hops (the default) and over plain calls:
    the same spans (a gRPC client span per hop and attempt, as the instrumentation opens
    for a plain call), under the same parents."""
    shapes: list[Shape] = []
    for stack, name in [(traced_resume, "multiplexed"), (traced_per_call, "per_call")]:
        trace_id = secrets.token_hex(16)
        await _chat(stack, SCRIPTED_MODEL, trace_id)
        spans = receiver.wait_for(trace_id, SERVICES)
        TREES[f"resumed stream, {name} (stand-in engines)"] = tree(spans)
        shapes.append(_shape(spans))
    mux, per_call = shapes
    assert mux == per_call
    generate = ("/tera.v1.Engine/Generate", ("rpc.grpc.status_code", 0))
    calls = [s for _, s in mux if s[1] == CLIENT and s[2:4] == generate]
    assert len(calls) == 2, mux  # the edge's, and the resumed attempt's (the cut one failed)


def test_engine_reexposes_vllm_metrics(traced_vllm: RunningStack) -> None:
    import urllib.request

    url = f"http://127.0.0.1:{ENGINE_METRICS_PORT}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    ttft = [
        line
        for line in text.splitlines()
        if line.startswith("vllm:time_to_first_token_seconds_count")
    ]
    assert ttft and float(ttft[0].split()[-1]) >= 1, "vLLM's own metrics, after one request"
    assert "tera_engine_in_flight" in text


def test_print_trees() -> None:
    """The trees for the closing note (run with -s)."""
    for name, text in TREES.items():
        print(f"\n--- {name}\n{text}")
    assert TREES
