"""The router inside the edge's process (services/gateway): streams take the in-memory
link, and everything the two processes gave holds in one: a stream cut mid-way resumes
token-exactly, internal gRPC callers reach the router's own port, and stopping the
process stops both."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
import yaml

from bench.waterfall import SERVICES, Sent, marks, streamed_chat_body, timed_first_token
from devstack.processes import free_port
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc
from tests.conftest import ROOT, SCRIPTED_MODEL, RunningStack
from tests.faults.fleet import ROUTER_SETTINGS, router_metric
from tests.faults.test_resume import UTF8, assert_unfailed, reference, stream
from tests.observability.otlp_receiver import OtlpReceiver


def _colocated(
    scripted_stack: Callable[..., RunningStack], tmp_path: Path, replicas: int, behaviour: dict
) -> RunningStack:
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump(ROUTER_SETTINGS))
    return scripted_stack(
        engines=replicas,
        per_engine_args=[["--scripted", json.dumps(behaviour)]] * replicas,
        router_args=["--config", str(config), "--metrics-port", str(free_port())],
        colocated=True,
    )


def _log(stack: RunningStack) -> str:
    log_dir = stack.stack.plan.log_dir
    assert log_dir is not None
    return (log_dir / "gateway.log").read_text()


async def test_a_cut_stream_resumes_token_exactly_over_the_in_memory_link(
    scripted_stack, tmp_path: Path
) -> None:
    behaviour = {**UTF8, "fail_after_tokens": 3}
    stack = _colocated(scripted_stack, tmp_path, 2, behaviour)
    assert stack.stack.router is None, "a router process of its own was started"
    body = {"max_tokens": 6}
    assert_unfailed(await stream(stack.base_url, body), await reference(behaviour, body))
    assert router_metric(stack, "tera_router_resumes_total", reason="internal") == 1
    assert "joined in this process" in _log(stack)


def test_internal_grpc_callers_reach_the_routers_own_port(scripted_stack, tmp_path: Path) -> None:
    stack = _colocated(scripted_stack, tmp_path, 1, {"tokens_per_second": 200})
    plan = stack.stack.plan
    request = pb.GenerateRequest(
        prompt=pb.PromptInput(text="hello"), sampling=pb.SamplingParams(max_tokens=3)
    )
    with grpc.insecure_channel(f"{plan.host}:{plan.router_port}") as channel:
        call = pb_grpc.EngineStub(channel).Generate(
            request, metadata=[("tera-model", SCRIPTED_MODEL)], timeout=10
        )
        ids = [i for message in call for c in message.choices for i in c.token_ids]
    assert ids == [0, 1, 2]


def test_stopping_the_process_stops_the_edge_and_the_router(scripted_stack, tmp_path: Path) -> None:
    stack = _colocated(scripted_stack, tmp_path, 1, {"tokens_per_second": 200})
    gateway = stack.stack.edge
    assert gateway is not None
    gateway.stop()  # SIGTERM, as an orchestrator sends
    log = _log(stack)
    assert "edge stopped" in log and "router stopped" in log


def test_a_router_that_cannot_start_takes_the_process_down(tmp_path: Path) -> None:
    """Not an edge left serving with no router behind it: the process exits, and the
    supervisor (tera run) or the orchestrator restarts it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        router_port = taken.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "services.gateway",
                "--port",
                str(free_port()),
                "--",
                "--port",
                str(router_port),
                "--replica",
                f"127.0.0.1:{free_port()}",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode != 0, done.stderr[-2000:]
    assert "edge stopped" in done.stderr, done.stderr[-2000:]


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:  # requested first: it outlives the stack's last exports
        yield r


async def test_each_halfs_spans_are_named_as_its_own_process_would_name_them(
    receiver: OtlpReceiver, scripted_stack, tmp_path: Path
) -> None:
    # The router's half runs the served end of the in-memory link too: its spans are
    # tera-router's though the edge's writes deliver every frame to it.
    stack = scripted_stack(behaviour={"tokens_per_second": 200}, colocated=True, env=receiver.env)
    trace_id = secrets.token_hex(16)
    headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    url = f"{stack.base_url}/chat/completions"
    async with aiohttp.ClientSession() as session:
        sent_ns, first_ns = await timed_first_token(
            session, url, streamed_chat_body(SCRIPTED_MODEL, 4), headers
        )
    spans = receiver.wait_for(trace_id, SERVICES, timeout_s=30)
    assert {s.service for s in spans} == SERVICES, [(s.service, s.name) for s in spans]
    assert marks(spans, Sent(trace_id, sent_ns, first_ns)), "the waterfall cannot time it"
    assert "joined in this process" in _log(stack)


def test_a_call_on_the_routers_own_grpc_port_is_traced_as_the_routers(
    receiver: OtlpReceiver, scripted_stack
) -> None:
    """An internal gRPC caller's call never touches the edge's half: its gateway spans are
    all tera-router's (the gRPC server's handlers start in the router's context)."""
    stack = scripted_stack(behaviour={"tokens_per_second": 200}, colocated=True, env=receiver.env)
    trace_id = secrets.token_hex(16)
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    request = pb.GenerateRequest(
        prompt=pb.PromptInput(text="hello"), sampling=pb.SamplingParams(max_tokens=3)
    )
    plan = stack.stack.plan
    with grpc.insecure_channel(f"{plan.host}:{plan.router_port}") as channel:
        metadata = [("tera-model", SCRIPTED_MODEL), ("traceparent", traceparent)]
        call = pb_grpc.EngineStub(channel).Generate(request, metadata=metadata, timeout=10)
        assert sum(len(c.token_ids) for m in call for c in m.choices) == 3
    spans = receiver.wait_for(trace_id, {"tera-router", "tera-engine"}, timeout_s=30)
    named = sorted({(s.service, s.name) for s in spans})
    assert {s.service for s in spans} == {"tera-router", "tera-engine"}, named
    assert any(s.service == "tera-router" and s.kind == 2 for s in spans), named  # server
