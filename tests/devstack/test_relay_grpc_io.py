"""The edge and the router run gRPC's polling I/O (grpc_options.RELAY_GRPC_EXPERIMENTS):
devstack sets it in their environment, the grpc installed knows the experiments it names,
and it is in effect: while they relay streams, gRPC's EventEngine threads, which read the
sockets by default and so wake for every message, stay asleep. The gateway image sets
the same value."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import aiohttp

from devstack.processes import ManagedProcess
from services.common.grpc_options import RELAY_GRPC_EXPERIMENTS
from tests.conftest import SCRIPTED_MODEL, RunningStack

ROOT = Path(__file__).resolve().parents[2]
STREAMS, TOKENS = 16, 400


def _environment(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode().split("=", 1) for e in entries if b"=" in e)


def _wakeups(pid: int) -> tuple[int, int]:
    """Voluntary context switches so far: the main thread's, and all of gRPC's
    EventEngine threads' together."""
    main = event_engine = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        status = (task / "status").read_text()
        switches = int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)$", status, re.M)[1])  # type: ignore[index]
        if int(task.name) == pid:
            main = switches
        elif (task / "comm").read_text().strip() == "event_engine":
            event_engine += switches
    return main, event_engine


async def _relay_streams(base_url: str) -> None:
    body = {
        "model": SCRIPTED_MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": TOKENS,
        "stream": True,
    }

    async def one(session: aiohttp.ClientSession) -> None:
        async with session.post(f"{base_url}/chat/completions", json=body) as r:
            assert r.status == 200
            assert (await r.text()).endswith("data: [DONE]\n\n")

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session) for _ in range(STREAMS)))


async def test_the_relay_runs_on_grpcs_polling_io(scripted_stack) -> None:  # type: ignore[no-untyped-def]
    stack: RunningStack = scripted_stack(behaviour={"tokens_per_second": 800, "step_ms": 2})
    relay: list[ManagedProcess] = [stack.stack.router, stack.stack.edge]  # type: ignore[list-item]
    if "GRPC_EXPERIMENTS" not in os.environ:  # an operator's own choice wins
        for process in relay:
            assert _environment(process.pid)["GRPC_EXPERIMENTS"] == RELAY_GRPC_EXPERIMENTS
    before = {p.name: _wakeups(p.pid) for p in relay}
    await _relay_streams(stack.base_url)
    for process in relay:
        main_before, event_engine_before = before[process.name]
        main_now, event_engine_now = _wakeups(process.pid)
        main, event_engine = main_now - main_before, event_engine_now - event_engine_before
        assert main >= 100, f"{process.name}: too little relayed to tell ({main} wake-ups)"
        # On the EventEngine's I/O its threads wake about twice as often as the main one.
        assert event_engine * 2 < main, f"{process.name}: {event_engine} vs {main} wake-ups"
    logs = stack.stack.plan.log_dir
    assert logs is not None
    for name in ("router", "edge"):
        assert "Unknown experiment" not in (logs / f"{name}.log").read_text()


def test_the_gateway_image_sets_the_same_experiments() -> None:
    dockerfile = (ROOT / "deploy/docker/Dockerfile.gateway").read_text()
    assert re.findall(r"^ENV GRPC_EXPERIMENTS=(\S+)$", dockerfile, re.M) == [RELAY_GRPC_EXPERIMENTS]
