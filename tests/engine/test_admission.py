"""The engine's admission limit: a call at the limit waits briefly for a slot being
released (a router sends the next call as soon as it cancels one) before it is refused."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from services.engine.admission import InFlightLimit
from services.engine.errors import EngineError


async def hold(limit: InFlightLimit, seconds: float) -> None:
    async with limit.admit():
        await asyncio.sleep(seconds)


async def test_a_call_at_the_limit_takes_a_slot_freed_within_the_wait() -> None:
    limit = InFlightLimit(1, release_wait_s=1.0)
    held = asyncio.create_task(hold(limit, 0.05))  # a cancelled call, still tearing down
    await asyncio.sleep(0)
    started = time.monotonic()
    async with limit.admit():
        assert limit.in_flight == 1
    assert time.monotonic() - started < 0.5  # at the release, not at the end of the wait
    await held


async def test_a_call_at_the_limit_is_refused_when_no_slot_frees() -> None:
    limit = InFlightLimit(1, release_wait_s=0.05)
    held = asyncio.create_task(hold(limit, 1.0))
    await asyncio.sleep(0)
    with pytest.raises(EngineError) as refused:
        async with limit.admit():
            pass
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert limit.in_flight == 1
    held.cancel()


async def test_a_draining_engine_admits_nothing() -> None:
    limit = InFlightLimit(1)
    limit.draining = True
    with pytest.raises(EngineError) as refused:
        async with limit.admit():
            pass
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE


async def test_the_engine_measures_its_own_arrival_rate() -> None:
    """The rate every router reads (LoadReport.arrivals_per_s): of the calls admitted
    between two readings, over the time between them."""
    limit = InFlightLimit(10)
    started = time.monotonic()
    assert limit.arrivals_per_s() == 0  # the first reading is the base
    for _ in range(10):
        async with limit.admit():
            pass
    await asyncio.sleep(0.2)
    rate = limit.arrivals_per_s()
    assert 10 / (time.monotonic() - started) <= rate <= 10 / 0.2
