"""The router re-reads its config on SIGHUP: replicas added and removed without restart."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import yaml

from services.common.processes import ManagedProcess, free_port, wait_until
from services.common.readiness import edge_lists_models
from tests.conftest import SCRIPTED_MODEL, RunningStack
from tests.faults.load import run_load
from tests.faults.test_fault_suite import ROUTER_SETTINGS, _engine_total

_ = RunningStack


async def test_sighup_reloads_replicas(tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    addresses = [f"127.0.0.1:{p}" for p in ports]
    engines = [
        ManagedProcess(
            f"engine:{p}",
            [
                "-m",
                "services.engine",
                "--port",
                str(p),
                "--backend",
                "scripted",
                "--model-id",
                SCRIPTED_MODEL,
                "--scripted",
                json.dumps({"tokens_per_second": 100}),
            ],
            log_path=tmp_path / f"engine-{p}.log",
        ).start()
        for p in ports
    ]
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump({**ROUTER_SETTINGS, "replicas": addresses[:1]}))
    router_port, edge_port = free_port(), free_port()
    router = ManagedProcess(
        "router",
        ["-m", "services.router", "--port", str(router_port), "--config", str(config)],
        log_path=tmp_path / "router.log",
    ).start()
    edge = ManagedProcess(
        "edge",
        ["-m", "services.edge", "--port", str(edge_port), "--router", f"127.0.0.1:{router_port}"],
        log_path=tmp_path / "edge.log",
    ).start()
    base = f"http://127.0.0.1:{edge_port}/v1"
    everything = [*engines, router, edge]
    try:
        wait_until(
            lambda: edge_lists_models(base, [SCRIPTED_MODEL]),
            timeout_s=60,
            watch=everything,
            what="the stack",
        )
        assert (await run_load(base, requests=6, concurrency=3, max_tokens=3)).counts["ok"] == 6
        assert _engine_total(addresses[1]) == 0, "B is not configured yet"

        config.write_text(yaml.safe_dump({**ROUTER_SETTINGS, "replicas": addresses[1:]}))
        router.send_signal(signal.SIGHUP)
        for _ in range(50):  # until the reload has taken effect
            await run_load(base, requests=1, concurrency=1, max_tokens=1)
            if _engine_total(addresses[1]) > 0:
                break
            await asyncio.sleep(0.1)
        served_a = _engine_total(addresses[0])
        assert (await run_load(base, requests=6, concurrency=3, max_tokens=3)).counts["ok"] == 6
        assert _engine_total(addresses[0]) == served_a, "A was removed by the reload"
        assert _engine_total(addresses[1]) >= 6

        config.write_text("replicas: [this is not: valid")
        router.send_signal(signal.SIGHUP)
        assert (await run_load(base, requests=2, concurrency=2, max_tokens=3)).counts["ok"] == 2
        assert router.alive(), "a bad config is refused, the old one kept"
    finally:
        for process in reversed(everything):
            process.stop()
