"""Fair sharing across routers, with real processes: two stacks (edge -> router -> one
stand-in engine of two slots), their routers' fair queues sharing counters through a real
redis-server named in the catalog both read. Tenant x floods through edge A only; y
floods through both edges alike. y is served by B anyway, so fleet-wide fairness gives x
most of A; each router counting alone splits A half and half.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from devstack.processes import free_port
from tests.conftest import SCRIPTED_MODEL, RunningStack
from tests.faults.fair_load import flood
from tests.faults.fleet import router_metric
from tests.faults.test_fairness import ENGINE, ROUTER, TOKENS
from tests.tenancy.conftest import RedisServer, redis_server  # noqa: F401 (fixture)

SECONDS = 8.0
WORKERS = 6  # per tenant and edge: 3x an engine's two slots, so both stay backlogged


def _stack(
    scripted_stack: Callable[..., RunningStack], folder: Path, redis: str | None
) -> RunningStack:
    folder.mkdir()
    router, catalog = folder / "router.yaml", folder / "catalog.yaml"
    router.write_text(yaml.safe_dump(ROUTER))
    keys = [{"name": n, "key": f"sk-{n}"} for n in ("x", "y")]
    shared = {} if redis is None else {"redis": {"url": redis, "timeout_s": 2.0}}
    catalog.write_text(yaml.safe_dump({"models": [{"id": SCRIPTED_MODEL}], "keys": keys, **shared}))
    engine = ["--scripted", json.dumps(ENGINE), "--max-in-flight", "2"]
    return scripted_stack(
        per_engine_args=[engine],
        router_args=[
            *("--config", str(router), "--catalog", str(catalog)),
            *("--metrics-port", str(free_port())),
        ],
        edge_args=["--catalog", str(catalog)],
    )


@dataclass
class Served:
    """Answers served while x (through A) and y (through A and B) were all backlogged:
    not the ramp-up, nor the queues draining after."""

    x_a: int
    y_a: int
    y_b: int
    statuses: set[int]

    @property
    def x_share(self) -> float:
        return self.x_a / max(1, self.x_a + self.y_a)


async def _floods(a: RunningStack, b: RunningStack, seconds: float) -> Served:
    started = time.monotonic()
    loads = await asyncio.gather(
        *(
            flood(stack.base_url, key, workers=WORKERS, seconds=seconds, max_tokens=TOKENS)
            for stack, key in ((a, "sk-x"), (a, "sk-y"), (b, "sk-y"))
        )
    )
    window = (started + 1.5, started + seconds)
    statuses = {r.status for load in loads for r in load.results}
    return Served(*(load.served_between(*window) for load in loads), statuses)


def _syncs(stack: RunningStack) -> dict[str, float]:
    return {
        o: router_metric(stack, "tera_router_fair_syncs_total", outcome=o) for o in ("ok", "failed")
    }


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "per-router"])
async def test_two_routers_share_one_fairness_budget(
    scripted_stack: Callable[..., RunningStack],
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
    shared: bool,
) -> None:
    redis = redis_server.url if shared else None
    a, b = (_stack(scripted_stack, tmp_path / name, redis) for name in ("a", "b"))
    await asyncio.sleep(0.5)  # the routers have polled their engines' admission limits
    served = await _floods(a, b, SECONDS)
    tokens = {t: router_metric(a, "tera_router_dispatched_tokens_total", tenant=t) for t in "xy"}
    syncs = _syncs(a)
    print(
        f"\n[fair] two routers, {'shared' if shared else 'per-router'} counters: on router A "
        f"x {served.x_a} : y {served.y_a} = x's share {served.x_share:.2f} (B served y "
        f"{served.y_b}); A's dispatched tokens {tokens}; A's syncs {syncs}"
    )
    assert served.x_a + served.y_a >= 10, "router A served too little to judge"
    if shared:
        assert served.x_share >= 0.7
        assert syncs["ok"] > 0 and syncs["failed"] == 0
    else:
        assert 0.3 <= served.x_share <= 0.65
        assert syncs["ok"] == syncs["failed"] == 0


async def test_routers_serve_through_a_redis_outage_and_share_again_after_it(
    scripted_stack: Callable[..., RunningStack],
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    a, b = (_stack(scripted_stack, tmp_path / name, redis_server.url) for name in ("a", "b"))
    await asyncio.sleep(0.5)
    redis_server.stop()
    during = await _floods(a, b, 4.0)
    down = _syncs(a)
    redis_server.start()  # same port, empty: the routers push what they charged meanwhile
    after = await _floods(a, b, SECONDS)
    print(
        f"\n[fair] Redis down: x's share of A {during.x_share:.2f}, statuses "
        f"{during.statuses}, A's syncs {down}; back: x's share {after.x_share:.2f}, "
        f"statuses {after.statuses}, A's syncs {_syncs(a)}"
    )
    # Never an error; y may be shed at A (429 + Retry-After) once A serves x first.
    assert during.statuses <= {200, 429} and during.x_a + during.y_a >= 4
    assert down["failed"] > 0
    assert _syncs(a)["ok"] > down["ok"]
    assert after.statuses <= {200, 429} and after.x_share >= 0.7
