"""Child-process supervision shared by `tera run` and the test suite.

Each service runs in its own process group, so stopping it also stops what it spawned
(vLLM's EngineCore and workers): SIGTERM to the group, then SIGKILL after a grace period.
Nothing is left behind.

The groups stay in the launcher's session, not one session each: Linux's scheduler
autogroups share a CPU between sessions before threads, and vLLM's EngineCore spins
(sched_yield between steps) on the CPU it shares with the edge and router. Across sessions
the spinner's whole group kept that CPU for tens of milliseconds while the gateway, runnable,
waited (0.42 ms average, 140 ms worst, against 0.04 ms for the engine front in the
EngineCore's session); in one session its yields hand the CPU over at once, as they do to
vLLM's own API server, its parent.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import IO

# Ports handed out are below the kernel's ephemeral range: bind(0) would pick from inside
# it, and between our check and the child's bind any outgoing connection on the machine
# may take the same number as its source port (CI saw "address already in use" twice in
# one run). Outgoing connections never land below the range.
_LOWEST_PORT = 10_000
_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _candidate_ports() -> range:
    low, high = _ephemeral_range()
    if low - _LOWEST_PORT >= 1_000:
        return range(_LOWEST_PORT, low)
    return range(high + 1, 65_536)  # a range set low leaves room only above it


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, outside the ephemeral range, not handed out before by
    this process (a child may not have bound it yet)."""
    return free_ports_in_a_row(1, host)


def free_ports_in_a_row(n: int, host: str = "127.0.0.1") -> int:
    """The first of n consecutive free ports."""
    candidates = _candidate_ports()
    for _ in range(200):
        first = random.randrange(candidates.start, candidates.stop - n)
        ports = range(first, first + n)
        if any(p in _handed_out for p in ports):
            continue
        if all(_bindable(host, p) for p in ports):
            _handed_out.update(ports)
            return first
    raise RuntimeError(f"no {n} consecutive free ports in {candidates}")


class ManagedProcess:
    def __init__(
        self,
        name: str,
        args: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
        cpus: frozenset[int] | None = None,
    ) -> None:
        self.name = name
        self.args = [sys.executable, *args]
        self._env = {**os.environ, **(env or {})}
        self._log_path = log_path
        self._cwd = cwd
        self._cpus = cpus  # CPU affinity, set before exec so every thread inherits it
        self._log: IO[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        stdout: IO[bytes] | None = None
        if self._log_path is not None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = stdout = self._log_path.open("ab")
        self.proc = subprocess.Popen(
            self.args,
            env=self._env,
            cwd=self._cwd,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout else None,
            stdin=subprocess.DEVNULL,
            process_group=0,  # see the module's docstring: not a session of its own
            preexec_fn=self._pin if self._cpus else None,
        )
        return self

    def _pin(self) -> None:
        os.sched_setaffinity(0, self._cpus or ())

    def restart(self) -> ManagedProcess:
        """Starts the same command again (same port), after clearing out whatever the
        previous run left behind (e.g. vLLM's EngineCore, orphaned by a SIGKILL)."""
        self.stop(grace_s=0)
        return self.start()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        """Signals the main process only (e.g. SIGTERM to start a drain)."""
        if self.alive():
            os.kill(self.pid, sig)

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def wait_group_gone(self, timeout_s: float = 30.0) -> bool:
        """Waits until nothing of the group is left running. A SIGKILLed vLLM EngineCore
        takes a while to die on a loaded machine (its threads and memory are torn down
        first); a restart before that would hold two engines' memory at once."""
        deadline = time.monotonic() + timeout_s
        while not group_gone(self.pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM, wait up to grace_s, then SIGKILL the whole group; returns the exit code."""
        if self.proc is None:
            return None
        if self.alive():
            self.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace_s)
        code = self.proc.poll()
        # Whatever it spawned goes too, even if the main process exited cleanly.
        self.kill_group(signal.SIGKILL)
        if code is None:
            code = self.proc.wait(5)
        self.wait_group_gone()
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def log_tail(self, lines: int = 40) -> str:
        if self._log_path is None or not self._log_path.exists():
            return ""
        return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])


def interrupt_on_sigterm() -> None:
    """Makes SIGTERM end this launcher as Ctrl-C does. By default SIGTERM (`timeout`, a CI
    runner's cancel) ends it on the spot and its service processes, each in a group of its
    own, run on; as a KeyboardInterrupt it unwinds, and the `finally` blocks and fixture
    finalizers that stop them run. A second SIGTERM ends it on the spot."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def group_gone(pgid: int) -> bool:
    """No live process is left in the group. Zombies do not count: an orphaned child is
    reparented to a PID 1 that may reap it late, yet it holds no memory and no port.
    Without /proc (not Linux) this cannot tell, and says gone."""
    return not group_members(pgid)


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


def wait_until(
    check: Callable[[], bool],
    *,
    timeout_s: float,
    interval_s: float = 0.2,
    watch: Sequence[ManagedProcess] = (),
    what: str = "condition",
) -> None:
    """Polls check() until true; fails early if a watched process dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for process in watch:
            if not process.alive():
                raise RuntimeError(
                    f"{process.name} exited with {process.proc.poll() if process.proc else '?'} "
                    f"while waiting for {what}:\n{process.log_tail()}"
                )
        if check():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
