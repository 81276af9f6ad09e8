"""The fair queue's counters shared through a real Redis: two FairShare objects stand for
two routers, synced by hand (no timers), so each step's view can be checked."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from services.catalog.schema import Redis as RedisSettings
from services.router import fair_share
from services.router.config import FairConfig
from services.router.fair_share import FairShare
from services.router.queue_metrics import QueueMetrics
from tests.tenancy.conftest import RedisServer, redis_server  # noqa: F401 (fixture)

MODEL = "m"
Router = Callable[..., FairShare]


@pytest_asyncio.fixture(loop_scope="function")  # the clients live in the test's loop
async def router(redis_server: RedisServer) -> AsyncIterator[Router]:  # noqa: F811
    made: list[FairShare] = []

    def make(registry: CollectorRegistry | None = None, **fair: float) -> FairShare:
        settings = RedisSettings(url=redis_server.url, timeout_s=2.0)
        config = FairConfig(queue_size=8, **fair)
        metrics = QueueMetrics(registry or CollectorRegistry())
        made.append(FairShare(settings, config, metrics))
        return made[-1]

    yield make
    for share in made:
        await share.close()


def syncs(registry: CollectorRegistry, outcome: str) -> float:
    return registry.get_sample_value("tera_router_fair_syncs_total", {"outcome": outcome}) or 0


async def test_each_router_sees_the_others_charges_after_a_sync(router: Router) -> None:
    a, b = router(), router()
    a.counters(MODEL).add("x", 100)
    b.counters(MODEL).add("y", 30)
    b.counters(MODEL).add("x", 5)
    await a.sync()
    assert a.counters(MODEL).get("y") == 0  # B has not pushed yet
    await b.sync()
    await a.sync()
    for share in (a, b):
        assert (share.counters(MODEL).get("x"), share.counters(MODEL).get("y")) == (105, 30)


async def test_a_tenant_lifted_by_two_routers_is_raised_once(router: Router) -> None:
    a, b = router(), router()
    a.counters(MODEL).add("busy", 500)
    await a.sync()
    await b.sync()
    # "new" becomes active at both routers: each lifts it to the lowest waiting counter.
    a.counters(MODEL).lift("new", 500)
    a.counters(MODEL).add("new", 10)
    b.counters(MODEL).lift("new", 500)
    await a.sync()
    await b.sync()
    await a.sync()
    assert a.counters(MODEL).get("new") == b.counters(MODEL).get("new") == 510


async def test_counters_are_rebased_and_floors_follow(
    router: Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fair_share, "REBASE_AT", 100.0)
    a, b = router(), router()
    await b.sync()  # B's view is at base 0
    a.counters(MODEL).add("x", 150)
    a.counters(MODEL).add("y", 200)
    await a.sync()
    assert (a.counters(MODEL).get("x"), a.counters(MODEL).get("y")) == (0, 50)
    # B, not yet synced since the rebase, lifts z to y's counter as B last saw it (200).
    b.counters(MODEL).lift("z", 200)
    await b.sync()
    assert b.counters(MODEL).get("z") == b.counters(MODEL).get("y") == 50


async def test_without_redis_it_schedules_locally_and_pushes_once_back(
    router: Router,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    registry = CollectorRegistry()
    a, b = router(registry), router()
    b.counters(MODEL)  # B has the model's queue too: it syncs it
    redis_server.stop()
    a.counters(MODEL).add("x", 10)
    await a.sync()
    await a.sync()
    assert syncs(registry, "failed") == 2 and a.counters(MODEL).get("x") == 10
    redis_server.start()  # same port, empty
    a.counters(MODEL).add("x", 5)
    await a.sync()
    await b.sync()
    assert syncs(registry, "ok") == 1
    assert a.counters(MODEL).get("x") == b.counters(MODEL).get("x") == 15


async def test_a_tenant_nobody_charges_is_forgotten(router: Router) -> None:
    a, b = router(share_idle_s=1.0), router(share_idle_s=1.0)
    a.counters(MODEL).add("gone", 100)
    await a.sync()
    for _ in range(6):  # B keeps the model's keys alive; Redis counts whole seconds
        b.counters(MODEL).add("here", 1)
        await b.sync()
        await asyncio.sleep(0.5)
    await a.sync()
    assert a.counters(MODEL).get("gone") == 0 and a.counters(MODEL).get("here") == 6


async def test_routers_see_each_others_held_slots_until_a_silent_one_expires(
    router: Router,
) -> None:
    a, b = router(share_interval_s=0.1), router(share_interval_s=0.1)
    a.slots(MODEL).local = lambda: Counter({(1, "x"): 2})
    b.slots(MODEL).local = lambda: Counter({(1, "y"): 2, (2, "x"): 1})
    for share in (a, b, a):
        share.counters(MODEL)  # the model's queue exists: it is synced
        await share.sync()
    assert a.slots(MODEL).others == Counter({(1, "y"): 2, (2, "x"): 1})
    assert b.slots(MODEL).others == Counter({(1, "x"): 2})  # its own are not counted
    await asyncio.sleep(0.6)  # B stops syncing for more than 4 intervals
    await a.sync()
    assert a.slots(MODEL).others == Counter()
