"""The supervisor with real vLLM engines: `tera run --replicas 2`, one engine SIGKILLed
under load. Its EngineCore child must go with it, and the new engine come back."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from devstack.processes import wait_until
from devstack.readiness import router_has_replicas
from services.engine.model_prep import DEFAULT_MODEL_ID
from tests.devstack.cli import tera_run
from tests.faults.load import run_load


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_vllm_engine_killed_under_load_comes_back(tmp_path: Path, model_dir: Path) -> None:
    args = ["--model-dir", str(model_dir), "--no-speech", "--restart-backoff", "0.5"]
    with tera_run(tmp_path, None, replicas=2, args=args, ready_timeout_s=600) as run:
        load = dict(requests=12, concurrency=2, max_tokens=8, model=DEFAULT_MODEL_ID)
        assert (await run_load(run.base_url, **load)).summary()["succeeded"] == 12
        victim = run.engine(0)
        old = run.pids(victim)[0]
        os.kill(old, signal.SIGKILL)
        during = await run_load(run.base_url, **load)  # the survivor serves meanwhile
        assert during.summary()["succeeded"] == 12, during.outcomes
        run.wait_for_output(f"{victim} restarted (pid", timeout_s=30)
        assert _group_gone(old), "the killed engine's EngineCore outlived it"
        await asyncio.to_thread(
            wait_until, lambda: router_has_replicas(run.router, 2), timeout_s=300, what="rejoin"
        )
        assert (await run_load(run.base_url, **load)).summary()["succeeded"] == 12
