"""`tera run` keeps its processes alive: real CLI, real processes, stand-in engines."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import openai
import pytest

from devstack.processes import wait_until
from devstack.readiness import router_has_replicas
from tests.conftest import SCRIPTED_MODEL
from tests.devstack.cli import tera_run
from tests.faults.fleet import engine_total
from tests.faults.load import run_load

FAST = {"tokens_per_second": 100}


async def test_a_killed_engine_is_restarted_and_back_in_rotation_under_load(
    tmp_path: Path,
) -> None:
    # p2c: calls of one prompt reach both replicas (cache_aware would keep them on one).
    args = ["--restart-backoff", "0.2", "--policy", "p2c"]
    with tera_run(tmp_path, FAST, replicas=2, args=args) as run:
        victim = run.engine(0)
        load = asyncio.create_task(
            run_load(run.base_url, requests=120, concurrency=6, max_tokens=10, spacing_s=0.04)
        )
        await asyncio.sleep(1.0)
        os.kill(run.pids(victim)[0], signal.SIGKILL)
        tally = await load
        summary = tally.summary()
        # The survivor, the router and the edge stayed up: nothing failed silently, and
        # only streams that were running on the killed engine may have failed (explicitly).
        assert summary["silently_truncated"] == 0, summary
        assert summary["succeeded"] >= 110, summary
        run.wait_for_output(f"{victim} was killed by SIGKILL")
        run.wait_for_output(f"{victim} restarted (pid")
        assert len(run.pids(victim)) == 2
        wait_until(lambda: router_has_replicas(run.router, 2), timeout_s=30, what="readmission")
        # Back in rotation: the new process takes a share of new requests.
        after = await run_load(run.base_url, requests=20, concurrency=4, max_tokens=3)
        assert after.summary()["succeeded"] == 20
        assert await asyncio.to_thread(engine_total, run.engine_address(0)) > 0


async def test_a_crash_loop_is_given_up_on_and_the_rest_keep_serving(tmp_path: Path) -> None:
    behaviours = [FAST, {"exit_on_request": True}]
    args = ["--restart-backoff", "0.2", "--crash-limit", "3", "--crash-window", "60"]
    args += ["--policy", "p2c"]  # calls of one prompt must reach the looping replica
    with tera_run(tmp_path, behaviours, args=args) as run:
        looping = run.engine(1)
        for _ in range(60):  # traffic until the looping engine has crashed 3 times
            tally = await run_load(run.base_url, requests=6, concurrency=3, max_tokens=3)
            assert tally.summary()["succeeded"] == 6, tally.outcomes  # retried elsewhere
            if f"giving up on {looping}" in run.text():
                break
            await asyncio.sleep(0.3)
        run.wait_for_output(
            f"3 crashes within 60 s, giving up on {looping}; the other processes keep serving"
        )
        assert run.text().count(f"{looping} exited with code 3") == 3
        assert len(run.pids(looping)) == 3  # started, then restarted twice
        tally = await run_load(run.base_url, requests=20, concurrency=4, max_tokens=3)
        assert tally.summary()["succeeded"] == 20
        assert run.process.alive()


@pytest.mark.parametrize(
    ("layout", "names"),
    [([], ("gateway",)), (["--split"], ("router", "edge"))],
    ids=["gateway by default", "split"],
)
async def test_a_killed_router_or_edge_is_restarted(
    tmp_path: Path, layout: list[str], names: tuple[str, ...]
) -> None:
    with tera_run(tmp_path, FAST, args=["--restart-backoff", "0.2", *layout]) as run:
        assert len(run.pids(names[0])) == 1  # the layout asked for
        for name in names:
            os.kill(run.pids(name)[0], signal.SIGKILL)
            run.wait_for_output(f"{name} was killed by SIGKILL")
            run.wait_for_output(f"{name} restarted (pid")
            # Clients that retry (as the SDK does on 503 + Retry-After) get through.
            client = openai.AsyncOpenAI(base_url=run.base_url, api_key="unused", max_retries=8)
            for _ in range(5):
                reply = await client.chat.completions.create(
                    model=SCRIPTED_MODEL, messages=[{"role": "user", "content": "hi"}]
                )
                assert reply.choices[0].message.content
