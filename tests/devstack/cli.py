"""`tera run` (python -m devstack.run) as a test fixture: stand-in engines, free ports,
its output in a file, and the pids it reports, to kill children and check for leftovers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from devstack.processes import ManagedProcess, free_port, free_ports_in_a_row, wait_until
from devstack.readiness import http_healthy
from devstack.supervisor import PID_LINE
from tests.conftest import SCRIPTED_MODEL


@dataclass
class TeraRun:
    process: ManagedProcess
    output: Path
    base_url: str
    router: str
    engine_port: int

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def pids(self, name: str) -> list[int]:
        """Every pid the supervisor reported for this process, oldest first."""
        return [int(pid) for n, pid in PID_LINE.findall(self.text()) if n == name]

    def engine(self, i: int) -> str:
        return f"engine:{self.engine_port + i}"

    def engine_address(self, i: int) -> str:
        return f"127.0.0.1:{self.engine_port + i}"

    def wait_for_output(self, text: str, timeout_s: float = 30) -> None:
        wait_until(lambda: text in self.text(), timeout_s=timeout_s, what=repr(text))


def _supervising_the_edge(output: str) -> bool:
    """The edge's process is up: the gateway's (tera run's default) or, with --split, the
    edge's own."""
    return "supervising gateway" in output or "supervising edge" in output


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def tera_run(
    tmp_path: Path,
    behaviour: dict | list | None,
    *,
    replicas: int = 1,
    args: list[str] = (),
    ready_timeout_s: float = 60,
    plaintext: bool = True,
) -> Iterator[TeraRun]:
    """Starts the CLI with stand-in engines (behaviour None: the engines `args` name);
    on exit stops it with SIGINT (Ctrl-C) and checks that nothing it started is left."""
    n = len(behaviour) if isinstance(behaviour, list) else replicas
    engine_port, port, router_port = free_ports_in_a_row(n), free_port(), free_port()
    output = tmp_path / "tera-run.log"
    stand_in = [] if behaviour is None else ["--stand-in", json.dumps(behaviour)]
    stand_in += ["--model-id", SCRIPTED_MODEL] if stand_in else []
    cli = [
        *("-m", "devstack.run", *stand_in, "--replicas", str(n)),
        *("--port", str(port), "--router-port", str(router_port)),
        *("--ops-port", str(free_port()), *(["--plaintext"] if plaintext else [])),
        *("--engine-port", str(engine_port), *args),
    ]
    run = TeraRun(
        ManagedProcess("tera run", cli, log_path=output, env={"PYTHONUNBUFFERED": "1"}).start(),
        output,
        f"http://127.0.0.1:{port}/v1",
        f"127.0.0.1:{router_port}",
        engine_port,
    )
    try:
        wait_until(
            lambda: http_healthy(run.base_url, "/ready") and _supervising_the_edge(run.text()),
            timeout_s=ready_timeout_s,
            watch=[run.process],
            what="tera run to be ready",
        )
        yield run
    finally:
        pids = [int(p) for _, p in PID_LINE.findall(run.text())]
        run.process.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            run.process.proc.wait(30)  # type: ignore[union-attr]
        code = run.process.stop(grace_s=5)
        left = [p for p in pids if _alive(p)]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        assert not left, f"processes left behind by tera run: {left}"
        assert code == 0, f"tera run exited with {code} on Ctrl-C:\n{run.process.log_tail()}"
