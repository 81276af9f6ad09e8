"""Crash recovery under `tera run`: seconds from SIGKILL of one engine (of two) to its
return to rotation (the router counts both replicas SERVING again), through the real CLI
with its default restart backoff."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from bench.common import STAND_IN_MODEL, percentile
from devstack.processes import ManagedProcess, free_port, free_ports_in_a_row, wait_until
from devstack.readiness import http_healthy, router_has_replicas
from devstack.supervisor import PID_LINE


def run(results: Path, *, crashes: int = 3, engine_args: list[str] | None = None) -> dict:
    """engine_args: the CLI's model options for real engines (e.g. --model-dir DIR);
    default: stand-in engines."""
    port, router_port, engine_port = free_port(), free_port(), free_ports_in_a_row(2)
    model = ["--stand-in", json.dumps({}), "--model-id", STAND_IN_MODEL]
    cli = [
        *("-m", "devstack.run", "--replicas", "2", "--no-speech", "--port", str(port)),
        *("--router-port", str(router_port), "--engine-port", str(engine_port)),
        *("--ops-port", str(free_port()), "--plaintext"),
        *(engine_args if engine_args is not None else model),
    ]
    output = results / f"recovery-{'vllm' if engine_args else 'stand-in'}.log"
    tera = ManagedProcess("tera run", cli, log_path=output, env={"PYTHONUNBUFFERED": "1"})
    tera.start()
    router = f"127.0.0.1:{router_port}"
    try:
        wait_until(
            lambda: http_healthy(f"http://127.0.0.1:{port}/v1", "/ready"),
            timeout_s=600,
            watch=[tera],
            what="tera run",
        )
        seconds = [_crash_and_wait(output, f"engine:{engine_port}", router) for _ in range(crashes)]
    finally:
        tera.send_signal(signal.SIGINT)
        tera.proc.wait(60)  # type: ignore[union-attr]
        tera.stop()
    return {
        "engine": "vllm" if engine_args else "stand-in",
        "crashes": crashes,
        "back_in_rotation_s": seconds,
        "p50_s": percentile(seconds, 50),
    }


def _crash_and_wait(output: Path, name: str, router: str) -> float:
    wait_until(lambda: router_has_replicas(router, 2), timeout_s=600, what="both replicas")
    time.sleep(2)  # let the previous restart age out of the tightest backoff
    pid = [int(p) for n, p in PID_LINE.findall(output.read_text()) if n == name][-1]
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not router_has_replicas(router, 2), timeout_s=10, interval_s=0.01)
    wait_until(lambda: router_has_replicas(router, 2), timeout_s=600, interval_s=0.02)
    return time.monotonic() - killed
