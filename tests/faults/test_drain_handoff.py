"""Drain hand-off: a rolling restart of every replica under load, with streams longer
than the drain grace, loses no stream: what outlives the grace is handed off (ended
UNAVAILABLE + tera-handoff) and resumed token-exactly on the other replica."""

from __future__ import annotations

import asyncio
import signal

from devstack.processes import wait_until
from devstack.readiness import router_has_replicas
from tests.faults.fleet import router_metric
from tests.faults.load import run_load

GRACE_S = 0.5


async def test_rolling_restart_with_streams_longer_than_the_grace(resuming_fleet) -> None:
    stack = resuming_fleet(2, {"tokens_per_second": 20}, engine_extra=["--drain-grace-s", "0.5"])
    plan = stack.stack.plan
    router = f"{plan.host}:{plan.router_port}"
    # 300 tokens at 20/s: 15 s a stream, thirty times the grace, and long enough that
    # every stream is still running at the second drain on a loaded machine, where an
    # engine's restart took over 5 s (with 100 tokens the second drain found none).
    load = asyncio.create_task(
        run_load(stack.base_url, requests=16, concurrency=16, max_tokens=300)
    )
    await asyncio.sleep(0.5)  # every stream has tokens out
    exits = []
    for i, port in enumerate(plan.engine_ports):
        old = stack.stack.engines[i]
        old.send_signal(signal.SIGTERM)
        exits.append(await asyncio.to_thread(old.proc.wait, 20))  # type: ignore[union-attr]
        stack.stack.engines[i] = stack.stack.start_engine(port, plan.per_engine_args[i])
        stack.stack.engines.pop()  # start_engine appended it too
        await asyncio.to_thread(
            wait_until, lambda: router_has_replicas(router, 2), timeout_s=30, what="both back"
        )
    tally = await load
    assert tally.summary() == {
        "sent": 16,
        "succeeded": 16,
        "failed_with_error": 0,
        "silently_truncated": 0,
    }
    assert exits == [0, 0]
    assert router_metric(stack, "tera_router_resumes_total", reason="drain") >= 16
