"""A replica's recent arrival rate, from its engine's admitted-call counter.

An exponentially weighted mean of the rate between successive readings of the counter,
corrected for its start at zero (as Adam's moments are), so an estimate that has just
started gives the rate it has seen rather than a fraction of it.

The engine keeps one over its own counter and reports it (LoadReport.arrivals_per_s), so
every router reads the same figure whenever it started: a router restarted during a
rollout places new prefix groups as its peers do, rather than by the few seconds it has
seen. A router keeps one from LoadReport.total_requests as well, for an engine that does
not report the rate (services.router.replica.Replica.arrivals_per_s picks).
"""

from __future__ import annotations

import time
from collections.abc import Callable

# Long enough that a new prefix group's first call barely moves it, short enough that
# a shift of traffic shows within a bench run (30 s).
HALF_LIFE_S = 10.0


class ArrivalRate:
    def __init__(
        self, half_life_s: float = HALF_LIFE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._half_life_s = half_life_s
        self._clock = clock
        self._last: tuple[float, int] | None = None  # (when, total) of the previous report
        self._mean = 0.0
        self._weight = 0.0  # of the samples so far: 1 - decay since the first one

    @property
    def per_s(self) -> float:
        return self._mean / self._weight if self._weight else 0.0

    def observe(self, total: int) -> None:
        """One reading of the counter."""
        now = self._clock()
        last, self._last = self._last, (now, total)
        # The first report, or an engine that restarted (its counter went back): only a
        # new base to count from.
        if last is None or total < last[1] or now <= last[0]:
            return
        elapsed = now - last[0]
        keep = 0.5 ** (elapsed / self._half_life_s)
        sample = (total - last[1]) / elapsed
        self._mean = keep * self._mean + (1 - keep) * sample
        self._weight = keep * self._weight + (1 - keep)
