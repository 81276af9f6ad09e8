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
    started = time.monotonic()
    x_a, y_a, y_b = await asyncio.gather(
        *(
            flood(stack.base_url, key, workers=WORKERS, seconds=SECONDS, max_tokens=TOKENS)
            for stack, key in ((a, "sk-x"), (a, "sk-y"), (b, "sk-y"))
        )
    )
    # While all three are backlogged: not the ramp-up, nor the queues draining after.
    window = (started + 1.5, started + SECONDS)
    x, y = x_a.served_between(*window), y_a.served_between(*window)
    tokens = {t: router_metric(a, "tera_router_dispatched_tokens_total", tenant=t) for t in "xy"}
    syncs = {
        o: router_metric(a, "tera_router_fair_syncs_total", outcome=o) for o in ("ok", "failed")
    }
    print(
        f"\n[fair] two routers, {'shared' if shared else 'per-router'} counters: on router A "
        f"x {x} : y {y} = x's share {x / max(1, x + y):.2f} (B served y "
        f"{y_b.served_between(*window)}); A's dispatched tokens {tokens}; A's syncs {syncs}"
    )
    assert x + y >= 10, "router A served too little to judge"
    if shared:
        assert x / (x + y) >= 0.7
        assert syncs["ok"] > 0 and syncs["failed"] == 0
    else:
        assert 0.3 <= x / (x + y) <= 0.65
        assert syncs["ok"] == syncs["failed"] == 0
