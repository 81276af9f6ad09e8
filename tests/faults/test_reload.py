"""The router re-reads its config on SIGHUP: replicas added and removed without restart."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import yaml

from devstack.processes import ManagedProcess, free_port
from tests.conftest import SCRIPTED_MODEL
from tests.faults.fleet import ROUTER_SETTINGS, engine_total
from tests.faults.gateway import gateway, stand_in
from tests.faults.load import run_load


async def test_sighup_reloads_replicas(tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    addresses = [f"127.0.0.1:{p}" for p in ports]
    engines = [stand_in(tmp_path, p, tokens_per_second=100) for p in ports]
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump({**ROUTER_SETTINGS, "replicas": addresses[:1]}))
    try:
        with gateway(
            tmp_path, ["--config", str(config)], ready_models=[SCRIPTED_MODEL], watch=engines
        ) as (router, base):
            await _reload_scenario(router, config, base, addresses)
    finally:
        for engine in engines:
            engine.stop()


async def _reload_scenario(
    router: ManagedProcess, config: Path, base: str, addresses: list[str]
) -> None:
    assert (await run_load(base, requests=6, concurrency=3, max_tokens=3)).counts["ok"] == 6
    assert engine_total(addresses[1]) == 0, "B is not configured yet"

    config.write_text(yaml.safe_dump({**ROUTER_SETTINGS, "replicas": addresses[1:]}))
    router.send_signal(signal.SIGHUP)
    for _ in range(50):  # until the reload has taken effect
        await run_load(base, requests=1, concurrency=1, max_tokens=1)
        if engine_total(addresses[1]) > 0:
            break
        await asyncio.sleep(0.1)
    served_a = engine_total(addresses[0])
    assert (await run_load(base, requests=6, concurrency=3, max_tokens=3)).counts["ok"] == 6
    assert engine_total(addresses[0]) == served_a, "A was removed by the reload"
    assert engine_total(addresses[1]) >= 6

    config.write_text("replicas: [this is not: valid")
    router.send_signal(signal.SIGHUP)
    assert (await run_load(base, requests=2, concurrency=2, max_tokens=3)).counts["ok"] == 2
    assert router.alive(), "a bad config is refused, the old one kept"
