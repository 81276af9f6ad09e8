"""Keeps `tera run`'s processes alive: a process that exits is restarted with the same
command line (so the same port), after an exponential backoff; one that crashes
crash_limit times within crash_window_s is given up on, and the rest keep serving.

The router needs no telling: it keeps probing its static replicas and takes a restarted
engine back into rotation once its health says SERVING.
"""

from __future__ import annotations

import re
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from devstack.processes import ManagedProcess

# The lines that report a process's pid ("[tera] supervising NAME (pid N)" and
# "[tera] NAME restarted (pid N)"), for scripts that watch tera run's output.
PID_LINE = re.compile(r"\[tera\] (?:supervising )?(\S+) (?:restarted )?\(pid (\d+)\)")


@dataclass(frozen=True)
class RestartPolicy:
    backoff_s: float = 1.0  # before the first restart; doubles per crash in the window
    backoff_max_s: float = 30.0
    crash_limit: int = 5  # crashes within crash_window_s before giving up
    crash_window_s: float = 60.0

    def delay_s(self, recent_crashes: int) -> float:
        return min(self.backoff_s * 2 ** max(recent_crashes - 1, 0), self.backoff_max_s)


@dataclass
class _Watched:
    process: ManagedProcess
    started_at: float
    crashes: deque[float] = field(default_factory=deque)
    restart_at: float | None = None  # set while waiting out the backoff
    given_up: bool = False


def _say(message: str) -> None:
    print(f"[tera] {message}", file=sys.stderr, flush=True)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    """check() does one pass: notices exits, schedules or gives up, starts due restarts.
    The caller wakes it on SIGCHLD, or by next_wake_s() at the latest."""

    def __init__(
        self,
        processes: Sequence[ManagedProcess],
        policy: RestartPolicy,
        *,
        say: Callable[[str], None] = _say,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._say = say
        self._clock = clock
        now = clock()
        self._watched = [_Watched(p, now) for p in processes]
        for w in self._watched:
            say(f"supervising {w.process.name} (pid {w.process.pid})")

    @property
    def given_up(self) -> list[ManagedProcess]:
        return [w.process for w in self._watched if w.given_up]

    def all_given_up(self) -> bool:
        return all(w.given_up for w in self._watched)

    def next_wake_s(self, idle_s: float = 1.0) -> float:
        due = [w.restart_at for w in self._watched if w.restart_at is not None]
        return max(0.0, min([idle_s, *(at - self._clock() for at in due)]))

    def check(self) -> None:
        now = self._clock()
        for w in self._watched:
            if w.given_up:
                continue
            if w.restart_at is None and not w.process.alive():
                self._on_exit(w, now)
            elif w.restart_at is not None and now >= w.restart_at:
                self._restart(w, now)

    def _on_exit(self, w: _Watched, now: float) -> None:
        policy, name = self._policy, w.process.name
        code = w.process.proc.poll() if w.process.proc else None
        w.crashes.append(now)
        while w.crashes and w.crashes[0] < now - policy.crash_window_s:
            w.crashes.popleft()
        crashes = len(w.crashes)
        what = f"{name} {describe_exit(code)} after {now - w.started_at:.1f} s"
        if crashes >= policy.crash_limit:
            w.given_up = True
            w.process.stop(grace_s=0)  # reap it and anything it left behind
            self._say(
                f"{what}: {crashes} crashes within {policy.crash_window_s:.0f} s, "
                f"giving up on {name}; the other processes keep serving"
            )
            return
        delay = policy.delay_s(crashes)
        w.restart_at = now + delay
        self._say(
            f"{what}; restarting in {delay:.1f} s (crash {crashes}; the limit is "
            f"{policy.crash_limit} within {policy.crash_window_s:.0f} s)"
        )

    def _restart(self, w: _Watched, now: float) -> None:
        w.process.restart()
        w.restart_at = None
        w.started_at = now
        self._say(f"{w.process.name} restarted (pid {w.process.pid})")
