"""A replica killed under cache_aware, the default policy: every stream of one prompt is on
it, and each must be retried (not started) or resumed (started) on the other replica, even
when that one is fresh from a restart and has served nothing since."""

from __future__ import annotations

import asyncio
import signal

from devstack.processes import wait_until
from devstack.readiness import router_has_replicas
from tests.conftest import RunningStack
from tests.faults.fleet import ROUTER_SETTINGS, record, restart_engine, router_metric
from tests.faults.test_fault_suite import StackFactory
from tests.faults.test_resume import stream

# A prompt of several prefix chunks: cache_aware sends all its calls to its holder.
PROMPT = "Tell me a story about " + " ".join(f"w{i}" for i in range(64))
# Streams start 1 s after they are sent and last 2 s more: a kill finds some under way
# and some with no first token yet. The simulated cache makes the prompt's holder known.
ENGINE = {"tokens_per_second": 20, "first_token_delay_s": 1.0, "prefix_cache_chunks": 64}
STREAMS = 4


def _body() -> dict:
    return {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 40}


async def _kill_holder(stack: RunningStack, runs: list[asyncio.Task]) -> int:
    """SIGKILLs the replica holding most of the streams, once all are in flight."""
    for _ in range(100):
        loads = [await asyncio.to_thread(stack.engine_load, i) for i in (0, 1)]
        holder = max((0, 1), key=lambda i: loads[i].in_flight)
        if sum(x.in_flight for x in loads) >= len(runs):
            break
        await asyncio.sleep(0.1)
    assert loads[holder].in_flight >= STREAMS, "cache_aware put the streams on one replica"
    stack.stack.engines[holder].kill_group(signal.SIGKILL)
    return holder


def _restart(stack: RunningStack, i: int) -> None:
    restart_engine(stack, i, timeout_s=60)
    router = f"{stack.stack.plan.host}:{stack.stack.plan.router_port}"
    wait_until(lambda: router_has_replicas(router, 2), timeout_s=30, what="router sees both")


async def _round(stack: RunningStack, late: int) -> tuple[int, list[str]]:
    """STREAMS streams of PROMPT, killed under way; `late` more are sent just before the
    kill, so they have no first token yet when it lands. Returns the victim and the
    streams' failures (an error event, or a refused call: not 200)."""
    base = stack.base_url
    runs = [asyncio.create_task(stream(base, _body())) for _ in range(STREAMS)]
    await asyncio.sleep(1.5)
    runs += [asyncio.create_task(stream(base, _body())) for _ in range(late)]
    victim = await _kill_holder(stack, runs)
    results = await asyncio.gather(*runs, return_exceptions=True)
    return victim, [
        str(r) if isinstance(r, BaseException) else r["error"]["message"]
        for r in results
        if isinstance(r, BaseException) or r["error"] is not None
    ]


async def test_kill_after_a_restart_under_cache_aware(fleet: StackFactory) -> None:
    # The kill, not the attempt deadline, must be what moves the streams.
    retry = {**ROUTER_SETTINGS["retry"], "first_message_timeout_s": 30.0}
    stack = fleet([ENGINE, ENGINE], router={"policy": "cache_aware", "retry": retry})
    first, failures = await _round(stack, late=0)
    assert failures == []
    await asyncio.to_thread(_restart, stack, first)
    # The survivor now holds the prompt's prefix: the next round lands on it, and the
    # restarted replica, half-open with at most one call since, must take every stream.
    retried = router_metric(stack, "tera_router_retries_total", reason="UNAVAILABLE")
    resumed = router_metric(stack, "tera_router_resumes_total", reason="unavailable")
    second, failures = await _round(stack, late=2)
    record("kill under cache_aware after a restart", {"failures": len(failures)})
    assert second != first
    assert failures == []
    # Both kinds were there at the kill: streams under way, and streams not yet started.
    assert router_metric(stack, "tera_router_resumes_total", reason="unavailable") > resumed
    assert router_metric(stack, "tera_router_retries_total", reason="UNAVAILABLE") > retried
