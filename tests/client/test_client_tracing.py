"""The client propagates the caller's trace context: the engine's span joins its trace."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import tera_client as tc
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from devstack.processes import free_port
from devstack.stack import Stack, StackPlan
from tests.client.conftest import router_address
from tests.conftest import SCRIPTED_MODEL, RunningStack, scripted_args
from tests.observability.otlp_receiver import OtlpReceiver, tree


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def traced(receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    plan = StackPlan(
        edge_port=free_port(),
        router_port=free_port(),
        engine_ports=[free_port()],
        engine_args=scripted_args(),
        model_ids=[SCRIPTED_MODEL],
        env=receiver.env,
        log_dir=Path(tmp_path_factory.mktemp("client-traced")),
    )
    stack = Stack(plan).start(timeout_s=120)
    try:
        yield router_address(RunningStack(stack))
    finally:
        stack.stop()


def _callers_span(trace_id: str) -> NonRecordingSpan:
    """The caller's current span, as its own tracing would hold it (no SDK needed)."""
    context = SpanContext(
        trace_id=int(trace_id, 16),
        span_id=int(secrets.token_hex(8), 16),
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return NonRecordingSpan(context)


async def test_trace_context_reaches_the_engine_span(traced: str, receiver: OtlpReceiver) -> None:
    trace_id = secrets.token_hex(16)
    with trace.use_span(_callers_span(trace_id)):
        async with tc.AsyncTeraClient(traced, timeout=10) as client:
            answer = await client.complete(SCRIPTED_MODEL, prompt="hi", max_tokens=2)
    assert answer.text == "tok0 tok1 "
    spans = receiver.wait_for(trace_id, {"tera-router", "tera-engine"})
    engine = [s for s in spans if s.service == "tera-engine"]
    assert engine, tree(spans)
