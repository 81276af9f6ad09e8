"""Priority classes reach vLLM's scheduler. One real engine runs one sequence at a time
(max_num_seqs=1) under its default policy (priority): while a long `batch` stream runs,
more `batch` requests queue inside vLLM, then one `interactive` request; when the long
stream ends, the interactive one must start first. Its class comes as `tera-priority`
metadata, straight to the engine or through the router (which forwards it); the
engine's span records the class it scheduled each request by."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
import yaml

from devstack.engine_args import vllm_engine_args
from devstack.processes import free_port
from devstack.stack import Stack, StackPlan
from services.common import metadata
from services.engine.model_prep import DEFAULT_MODEL_ID
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc
from tests.conftest import CACHE_DIR, RunningStack
from tests.observability.otlp_receiver import OtlpReceiver, ReceivedSpan

# No hedge and no attempt deadline: a queued call waits for its turn on the one engine.
ROUTER = {"hedge": {"enabled": False}, "retry": {"first_message_timeout_s": 300}}
SERVER = 2  # OTLP span kind
QUEUED = ["batch", "batch", "batch", "interactive"]  # in order of arrival
# The long stream runs until cancelled, once the others are queued behind it: the
# engine's context is widened for it to last minutes, however slow queueing the others
# is on a loaded host (at 1,500 tokens it once ended before the third was queued, CI).
MAX_MODEL_LEN = 8192
LONG_TOKENS = MAX_MODEL_LEN - 64


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def one_at_a_time(
    model_dir: Path, receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStack]:
    logs = tmp_path_factory.mktemp("vllm-priority")
    config = logs / "router.yaml"
    config.write_text(yaml.safe_dump(ROUTER))
    plan = StackPlan(
        edge_port=free_port(),
        router_port=free_port(),
        engine_ports=[free_port()],
        engine_args=vllm_engine_args(
            model_dir, CACHE_DIR, max_num_seqs=1, max_model_len=MAX_MODEL_LEN
        ),
        router_args=["--config", str(config)],
        env=receiver.env,
        log_dir=logs,
    )
    stack = Stack(plan).start(timeout_s=600)
    try:
        yield RunningStack(stack)
    finally:
        stack.stop()


def _request(max_tokens: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model=DEFAULT_MODEL_ID,
        prompt=pb.PromptInput(text="Count from one to one thousand:"),
        sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True),
    )


def _call(
    stub: pb_grpc.EngineStub, priority: str, max_tokens: int, extra: Sequence[tuple[str, str]]
) -> grpc.aio.Call:
    md = ((metadata.MODEL, DEFAULT_MODEL_ID), (metadata.PRIORITY, priority), *extra)
    return stub.Generate(_request(max_tokens), metadata=md, timeout=300)


async def _started(
    stub: pb_grpc.EngineStub, priority: str, extra: Sequence[tuple[str, str]]
) -> tuple[float, str]:
    """When the call's first message came (vLLM had scheduled it), and its class."""
    call = _call(stub, priority, 2, extra)
    await call.read()
    started = time.monotonic()
    while await call.read() is not grpc.aio.EOF:  # to the end: an abort would free
        pass  # the slot early, and the next would start while this one still counts
    return started, priority


async def _until_waiting(engine: pb_grpc.EngineStub, count: int) -> None:
    """Until vLLM's scheduler reports `count` requests waiting (figures of its last step).
    A report late past its deadline is asked for again: on a loaded 2-core host the
    engine's answer took over 5 s once (CI), and the order, not the poll, is on test."""
    deadline = time.monotonic() + 60
    waiting = -1
    while waiting < count:
        assert time.monotonic() < deadline, f"{waiting} waiting, not {count}"
        try:
            waiting = (await engine.GetLoad(pb.GetLoadRequest(), timeout=5)).waiting
        except grpc.aio.AioRpcError as late:
            if late.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            continue
        await asyncio.sleep(0.05)


async def _start_order(
    target: str, engine: str, extra: Sequence[tuple[str, str]] = ()
) -> list[str]:
    """The classes of QUEUED in the order vLLM started them, each sent to `target` (with
    `extra` metadata) once the ones before it wait inside the engine behind a running
    `batch` stream."""
    async with (
        grpc.aio.insecure_channel(target) as to_target,
        grpc.aio.insecure_channel(engine) as to_engine,
    ):
        stub, engine_stub = pb_grpc.EngineStub(to_target), pb_grpc.EngineStub(to_engine)
        long = _call(stub, "batch", LONG_TOKENS, extra)
        await long.read()  # it holds the one running slot
        calls = []
        for i, priority in enumerate(QUEUED):
            calls.append(asyncio.create_task(_started(stub, priority, extra)))
            await _until_waiting(engine_stub, i + 1)
        long.cancel()  # vLLM aborts it and schedules the first waiting request
        return [priority for _, priority in sorted(await asyncio.gather(*calls))]


async def test_interactive_starts_before_queued_batch(one_at_a_time: RunningStack) -> None:
    (engine,) = one_at_a_time.engine_addresses
    order = await _start_order(engine, engine)
    assert order == ["interactive", "batch", "batch", "batch"], order


async def test_router_forwards_class_to_engine(
    one_at_a_time: RunningStack, receiver: OtlpReceiver
) -> None:
    (engine,) = one_at_a_time.engine_addresses
    plan = one_at_a_time.stack.plan
    trace_id = secrets.token_hex(16)  # one trace for all the calls
    traceparent = ("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01")
    order = await _start_order(f"{plan.host}:{plan.router_port}", engine, [traceparent])
    assert order == ["interactive", "batch", "batch", "batch"], order
    classes = Counter(s.attributes.get("tera.priority") for s in _engine_spans(receiver, trace_id))
    assert classes == {"batch": 4, "interactive": 1}, classes  # the long one is batch too


def _engine_spans(receiver: OtlpReceiver, trace_id: str) -> list[ReceivedSpan]:
    """The engine's server spans of the trace, once all 5 calls' have been exported."""
    deadline = time.monotonic() + 30
    while True:
        spans = [s for s in receiver.trace(trace_id) if s.service == "tera-engine"]
        spans = [s for s in spans if s.kind == SERVER and "Generate" in s.name]  # not vLLM's
        if len(spans) >= 1 + len(QUEUED) or time.monotonic() > deadline:
            return spans
        time.sleep(0.1)
