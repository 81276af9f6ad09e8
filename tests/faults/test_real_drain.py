"""Drain with a real vLLM engine: on SIGTERM it stops taking work (readiness
NOT_SERVING) yet stays alive (liveness SERVING) while its streams keep producing
tokens; when the grace runs out the streams still running end with an error status,
never as a complete answer, and the process exits."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.engine_args import vllm_engine_args
from devstack.processes import ManagedProcess, free_port, wait_until
from devstack.readiness import grpc_serving
from services.engine.model_prep import DEFAULT_MODEL_ID
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc
from tests.conftest import CACHE_DIR

GRACE_S = 4.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def engine(model_dir: Path, tmp_path: Path) -> Iterator[tuple[ManagedProcess, str]]:
    port = free_port()
    process = ManagedProcess(
        "vllm-engine",
        [
            "-m",
            "services.engine",
            "--port",
            str(port),
            "--drain-grace-s",
            str(GRACE_S),
            *vllm_engine_args(model_dir, CACHE_DIR),
        ],
        log_path=tmp_path / "engine.log",
    ).start()
    address = f"127.0.0.1:{port}"
    try:
        wait_until(
            lambda: grpc_serving(address),
            timeout_s=600,
            interval_s=1,
            watch=[process],
            what="the vLLM engine",
        )
        yield process, address
    finally:
        process.stop(grace_s=5)


async def _health(stub: health_pb2_grpc.HealthStub, service: str) -> int:
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
    return reply.status


async def _long_stream(stub: pb_grpc.EngineStub, log: list[object]) -> grpc.StatusCode:
    """Asks for far more tokens than a CPU can make within the grace; records each
    message's token count and finish reason; returns the final status code."""
    request = pb.GenerateRequest(
        request_id=f"drain-{id(log)}",
        model=DEFAULT_MODEL_ID,
        chat=pb.ChatInput(messages=[pb.ChatMessage(role="user", content="Count upwards.")]),
        sampling=pb.SamplingParams(max_tokens=1500, ignore_eos=True),
    )
    call = stub.Generate(request)
    try:
        async for message in call:
            log.append((time.monotonic(), [c.finish_reason for c in message.choices]))
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_real_drain_grace_runs_out(engine: tuple[ManagedProcess, str]) -> None:
    process, address = engine
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.EngineStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        logs: list[list[object]] = [[], []]
        streams = [asyncio.create_task(_long_stream(stub, log)) for log in logs]
        while not all(logs):  # both streams have tokens out
            await asyncio.sleep(0.05)
            assert not any(s.done() for s in streams), "streams ended before SIGTERM"
        load = await stub.GetLoad(pb.GetLoadRequest(), timeout=5)
        assert load.in_flight == 2
        process.send_signal(signal.SIGTERM)
        sigterm = time.monotonic()
        # At runtime, during the drain: not ready, still alive, still producing.
        for _ in range(50):
            if await _health(health, "") == NOT_SERVING:
                break
            await asyncio.sleep(0.05)
        assert await _health(health, "") == NOT_SERVING
        assert await _health(health, "tera.v1.Engine") == NOT_SERVING
        assert await _health(health, "liveness") == SERVING
        codes = await asyncio.gather(*streams)
        ended = time.monotonic()
    assert all(t > sigterm + 1 for log in logs for t, _ in log[-1:]), "tokens flowed in the drain"
    assert all(code != grpc.StatusCode.OK for code in codes), f"cut streams must fail: {codes}"
    assert all(not any(f for f in log[-1][1]) for log in logs), "no finish reason when cut"
    assert GRACE_S - 0.5 <= ended - sigterm < GRACE_S + 10, "cut when the grace ran out"
    assert await asyncio.to_thread(process.proc.wait, 30) == 0  # type: ignore[union-attr]
