"""Fault scenarios 1 and 2 with two real vLLM engines behind the router."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from devstack.engine_args import vllm_engine_args
from devstack.processes import free_port, wait_until
from devstack.readiness import grpc_serving
from devstack.stack import Stack, StackPlan
from services.engine.model_prep import DEFAULT_MODEL_ID
from tests.conftest import CACHE_DIR, RunningStack
from tests.faults.load import Tally, run_load
from tests.faults.test_fault_suite import ROUTER_SETTINGS, _record, _router_metric


@pytest.fixture(scope="module")
def two_vllm(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    logs = tmp_path_factory.mktemp("two-vllm")
    router_config = logs / "router.yaml"
    # The kill, not an attempt deadline, is what must trigger the retry here.
    router_config.write_text(
        yaml.safe_dump(
            {
                **ROUTER_SETTINGS,
                "retry": {**ROUTER_SETTINGS["retry"], "first_message_timeout_s": 60},
            }
        )
    )
    plan = StackPlan(
        edge_port=free_port(),
        router_port=free_port(),
        engine_ports=[free_port(), free_port()],
        engine_args=vllm_engine_args(model_dir, CACHE_DIR),
        router_args=["--config", str(router_config), "--metrics-port", str(free_port())],
        log_dir=logs,
    )
    stack = Stack(plan).start(timeout_s=600)
    time.sleep(1)  # the router's health checks (every 0.2 s) see both replicas
    try:
        yield RunningStack(stack)
    finally:
        stack.stop()


def _restart_engine_a(stack: RunningStack) -> None:
    plan = stack.stack.plan
    old = stack.stack.engines.pop(0)
    old.stop(grace_s=1)
    stack.stack.start_engine(plan.engine_ports[0])
    stack.stack.engines.insert(0, stack.stack.engines.pop())  # A is engines[0] again
    wait_until(
        lambda: grpc_serving(stack.engine_addresses[0]),
        timeout_s=300,
        interval_s=1,
        watch=stack.stack.engines,
        what="engine A to serve again",
    )


async def test_real_1_killed_before_first_token(two_vllm: RunningStack) -> None:
    engine_a = two_vllm.stack.engines[0]
    engine_a.kill_group(signal.SIGSTOP)  # frozen: its requests get no first token
    load = asyncio.create_task(
        run_load(
            two_vllm.base_url, requests=12, concurrency=12, max_tokens=8, model=DEFAULT_MODEL_ID
        )
    )
    address_a = two_vllm.engine_addresses[0]
    for _ in range(100):  # the router has sent some of them to A
        await asyncio.sleep(0.1)
        held = _router_metric(two_vllm, "tera_router_replica_in_flight", replica=address_a)
        if held >= 1:
            break
    assert held >= 1, "A holds requests when it dies"
    retried = _router_metric(two_vllm, "tera_router_retries_total", reason="UNAVAILABLE")
    engine_a.kill_group(signal.SIGKILL)
    tally = await load
    moved = _router_metric(two_vllm, "tera_router_retries_total", reason="UNAVAILABLE") - retried
    assert moved >= held, "every request A held was retried because A died"
    _record("real vLLM 1: killed before first token", tally.summary())
    failures = [o.detail for o in tally.outcomes if o.kind != "ok"][:3]
    assert tally.summary() == {
        "sent": 12,
        "succeeded": 12,
        "failed_with_error": 0,
        "silently_truncated": 0,
    }, failures


async def test_real_2_killed_mid_stream(two_vllm: RunningStack) -> None:
    await asyncio.to_thread(_restart_engine_a, two_vllm)
    # Until the router routes to A again, its streams would all land on B.
    for _ in range(60):
        await run_load(
            two_vllm.base_url, requests=2, concurrency=2, max_tokens=2, model=DEFAULT_MODEL_ID
        )
        if two_vllm.engine_load(0).total_requests > 0:
            break
    tally = Tally()
    load = asyncio.create_task(
        run_load(
            two_vllm.base_url,
            requests=8,
            concurrency=8,
            max_tokens=400,
            model=DEFAULT_MODEL_ID,
            tally=tally,
        )
    )
    for _ in range(600):  # every stream has tokens out (the machine may be busy)
        if tally.streams_with_tokens == 8:
            break
        await asyncio.sleep(0.1)
    assert tally.streams_with_tokens == 8
    # Kill a replica that holds streams: under load the router may briefly keep the
    # freshly restarted A out of rotation and put every stream on B.
    holding = [i for i in (0, 1) if two_vllm.engine_load(i).in_flight > 0]
    assert holding, "some replica holds the streams when it dies"
    victim = two_vllm.stack.engines[holding[0]]
    assert two_vllm.engine_addresses[holding[0]] == f"127.0.0.1:{victim.name.split(':')[-1]}"
    on_victim = two_vllm.engine_load(holding[0]).in_flight
    victim.kill_group(signal.SIGKILL)
    await load
    summary = tally.summary()
    _record("real vLLM 2: killed mid-stream", summary)
    assert summary["silently_truncated"] == 0
    # Exactly the victim's streams end with an explicit error; every other completes.
    assert summary["failed_with_error"] == on_victim
    assert summary["succeeded"] == 8 - on_victim
