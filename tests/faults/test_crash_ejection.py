"""A replica killed with many streams in flight is ejected once, for the base time: the
streams it cuts say nothing new about it, so a quick restart puts it back in rotation,
not after the longest ejection."""

from __future__ import annotations

import asyncio
import signal
import time

from devstack.processes import wait_until
from tests.conftest import RunningStack
from tests.faults.fleet import ROUTER_SETTINGS, engine_total, record, restart_engine, router_metric
from tests.faults.test_fault_suite import StackFactory
from tests.faults.test_resume import stream

STREAMS = 16  # round robin: 8 on the victim
# Counting each cut stream, 8 failures would eject for 1, 2, 4 ... capped at 120 s.
BREAKER = {"consecutive_failures": 2, "base_ejection_s": 1.0, "max_ejection_s": 120.0}
# Far below 120 s, far above a restart on a loaded machine plus the 1 s ejection.
BACK_WITHIN_S = 45.0
ENGINE = {"tokens_per_second": 5}


async def _all_in_flight(stack: RunningStack, victim: int) -> None:
    for _ in range(300):
        loads = [await asyncio.to_thread(stack.engine_load, i) for i in (0, 1)]
        if sum(x.in_flight for x in loads) >= STREAMS:
            break
        await asyncio.sleep(0.1)
    assert loads[victim].in_flight >= STREAMS // 2 - 1, "the victim holds many streams"


def _calls_until_served_by(stack: RunningStack, i: int, deadline: float) -> None:
    """Short calls, one at a time, until engine i has taken one (round robin alternates)."""
    address = stack.engine_addresses[i]

    def served() -> bool:
        asyncio.run(stream(stack.base_url, {"max_tokens": 2}))
        return engine_total(address) > 0

    wait_until(
        served,
        timeout_s=deadline - time.monotonic(),
        interval_s=0.2,
        what=f"engine {i} to take a call",
    )


async def test_a_crash_with_many_streams_ejects_once_and_a_restart_is_back_soon(
    fleet: StackFactory,
) -> None:
    # The kill, not the first-message deadline, must be the only fault.
    retry = {**ROUTER_SETTINGS["retry"], "first_message_timeout_s": 30.0}
    stack = fleet([ENGINE, ENGINE], router={"retry": retry, "breaker": BREAKER})
    body = {"max_tokens": 40}  # 8 s each: all under way at the kill
    runs = [asyncio.create_task(stream(stack.base_url, body)) for _ in range(STREAMS)]
    await _all_in_flight(stack, 0)
    stack.stack.engines[0].kill_group(signal.SIGKILL)
    killed_at = time.monotonic()
    await asyncio.to_thread(restart_engine, stack, 0, 60)
    await asyncio.to_thread(_calls_until_served_by, stack, 0, killed_at + BACK_WITHIN_S)
    back_after_s = time.monotonic() - killed_at
    results = await asyncio.gather(*runs)
    victim = stack.engine_addresses[0]
    ejections = router_metric(stack, "tera_router_replica_ejections_total", replica=victim)
    record("crash with many streams", {"ejections": int(ejections), "back_s": int(back_after_s)})
    assert [r["error"] for r in results] == [None] * STREAMS, "every cut stream resumed"
    assert ejections == 1
