"""A token bucket for extra work (retries, hedges) paid for by the traffic itself."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """Each request deposits `ratio` tokens and each extra attempt spends one, so extra
    attempts stay under `ratio` of the traffic (plus `floor_per_s` per second, which keeps
    some possible at low traffic). Starts full: `cap` may be spent at once."""

    def __init__(
        self,
        *,
        ratio: float,
        floor_per_s: float,
        cap: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ratio = ratio
        self._floor_per_s = floor_per_s
        self._cap = cap
        self._tokens = cap
        self._clock = clock
        self._last = clock()

    def on_request(self) -> None:
        self._refill()
        self._tokens = min(self._cap, self._tokens + self._ratio)

    @property
    def tokens(self) -> float:
        """What may be spent now (a gauge's reading)."""
        self._refill()
        return self._tokens

    def refund(self, tokens: int) -> None:
        """Gives back tokens spent ahead for extra attempts that were not made."""
        self._tokens = min(self._cap, self._tokens + tokens)

    def try_spend(self) -> bool:
        self._refill()
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._cap, self._tokens + (now - self._last) * self._floor_per_s)
        self._last = now
