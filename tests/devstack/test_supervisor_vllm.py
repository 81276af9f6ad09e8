"""The supervisor with real vLLM engines: `tera run --replicas 2`, one engine SIGKILLed
under load. Its EngineCore child must go with it, and the new engine come back."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import grpc

from devstack.cpu_layout import machine_cpus, plan_cpus
from devstack.processes import group_gone, group_members, wait_until
from devstack.readiness import router_has_replicas
from services.engine.model_prep import DEFAULT_MODEL_ID
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc
from tests.devstack.cli import TeraRun, tera_run
from tests.faults.load import Tally, run_load


async def test_vllm_engine_killed_under_load_comes_back(tmp_path: Path, model_dir: Path) -> None:
    args = ["--model-dir", str(model_dir), "--no-speech", "--restart-backoff", "0.5"]
    args += ["--policy", "p2c"]  # both replicas serve the load before the kill
    with tera_run(tmp_path, None, replicas=2, args=args, ready_timeout_s=600) as run:
        load = dict(requests=12, concurrency=2, max_tokens=8, model=DEFAULT_MODEL_ID)
        assert (await run_load(run.base_url, **load)).summary()["succeeded"] == 12
        binds = plan_cpus(machine_cpus(), 2).engine_binds
        for i, bind in enumerate(binds):  # not both replicas on vLLM's auto-bound core 0
            expected = {int(c) for c in bind.split(",")} if bind else None
            assert expected is None or expected in _thread_cpus(run.pids(run.engine(i))[0])
        victim = run.engine(0)
        old = run.pids(victim)[0]
        os.kill(old, signal.SIGKILL)
        during = await run_load(run.base_url, **load)  # the survivor serves meanwhile
        assert during.summary()["succeeded"] == 12, during.outcomes
        run.wait_for_output(f"{victim} restarted (pid", timeout_s=30)
        assert group_gone(old), "the killed engine's EngineCore outlived it"
        await asyncio.to_thread(
            wait_until, lambda: router_has_replicas(run.router, 2), timeout_s=300, what="rejoin"
        )
        assert (await run_load(run.base_url, **load)).summary()["succeeded"] == 12


def _thread_cpus(pgid: int) -> list[set[int]]:
    """The CPU sets of every thread of the process group (an engine and its EngineCore,
    whose OpenMP threads are bound)."""
    found = []
    for pid in group_members(pgid):
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                found.append(os.sched_getaffinity(int(task.name)))
            except OSError:
                continue  # gone meanwhile
    return found


def _engine_holding_streams(run: TeraRun, engines: int, timeout_s: float = 180) -> int:
    """The index of an engine with streams in flight, as soon as one has some."""
    found: list[int] = []

    def holding() -> bool:
        found[:] = [i for i in range(engines) if _in_flight(run.engine_address(i)) > 0]
        return bool(found)

    wait_until(holding, timeout_s=timeout_s, interval_s=0.05, what="streams on an engine")
    return found[0]


def _in_flight(address: str) -> int:
    """0 when the engine does not answer in time (busy prefilling on a loaded machine)."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.EngineStub(channel)
        try:
            return stub.GetLoad(pb.GetLoadRequest(), timeout=5).in_flight
        except grpc.RpcError:
            return 0


async def test_vllm_streams_survive_sigkill_of_their_engine(
    tmp_path: Path, model_dir: Path
) -> None:
    """Issue 13 end to end: under `tera run --replicas 2`, the engine holding streams is
    SIGKILLed mid-stream; the router resumes them on the other one, so every stream
    completes (the supervisor keeps the rest of the stack, and restarts the engine)."""
    args = ["--model-dir", str(model_dir), "--no-speech", "--restart-backoff", "0.5"]
    with tera_run(tmp_path, None, replicas=2, args=args, ready_timeout_s=600) as run:
        tally = Tally()
        body = dict(requests=6, concurrency=6, max_tokens=200, model=DEFAULT_MODEL_ID)
        load = asyncio.create_task(run_load(run.base_url, **body, tally=tally))
        for _ in range(1800):  # every stream has tokens out: the kill lands mid-stream
            if tally.streams_with_tokens == 6:
                break
            await asyncio.sleep(0.1)
        assert tally.streams_with_tokens == 6
        victim = await asyncio.to_thread(_engine_holding_streams, run, 2)
        os.kill(run.pids(run.engine(victim))[-1], signal.SIGKILL)
        summary = (await load).summary()
        assert summary["succeeded"] == 6, [o.detail for o in tally.outcomes]
        assert summary["silently_truncated"] == 0, summary
        run.wait_for_output(f"{run.engine(victim)} restarted (pid", timeout_s=60)
