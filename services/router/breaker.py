"""Outlier ejection per replica: closed -> open (ejected, growing backoff) -> half-open."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from services.router.config import BreakerConfig


@dataclass
class CircuitBreaker:
    config: BreakerConfig
    consecutive_failures: int = 0
    ejections: int = 0  # consecutive, reset by a success
    total_ejections: int = 0
    ejected_until: float = 0.0
    ejected_at: float = float("-inf")  # when the latest ejection began
    # Half-open: after an ejection, one trial request at a time until one succeeds.
    _trial_in_flight: bool = False
    _clock: object = field(default=time.monotonic, repr=False)

    def now(self) -> float:
        return self._clock()  # type: ignore[operator]

    @property
    def ejected(self) -> bool:
        return self.now() < self.ejected_until

    @property
    def half_open(self) -> bool:
        return self.ejections > 0 and not self.ejected and self.consecutive_failures > 0

    def allows(self) -> bool:
        if self.ejected:
            return False
        return not (self.half_open and self._trial_in_flight)

    @property
    def awaiting_trial(self) -> bool:
        """Held back only because its one half-open trial has not ended yet."""
        return not self.ejected and self.half_open and self._trial_in_flight

    def on_attempt(self) -> None:
        if self.half_open:
            self._trial_in_flight = True

    def on_abandoned(self) -> None:
        """The router gave up on an attempt (another answered first): let another trial go."""
        self._trial_in_flight = False

    def on_success(self) -> None:
        self.consecutive_failures = 0
        self.ejections = 0
        self._trial_in_flight = False

    def on_failure(self, *, started: float) -> bool:
        """Records the failure of an attempt started at `started` (this breaker's clock);
        True if it ejected the replica.

        An attempt started before the latest ejection is not counted: a crash that cuts
        ten streams fails them all within a millisecond, and each would eject again with
        a doubled backoff, so one crash would sit out the longest ejection. The ejection
        already stands for that fault (Envoy's outlier detection likewise ignores an
        ejected host until it is back). Nor does such a failure end a half-open trial:
        it is not the trial."""
        if self.ejected or started <= self.ejected_at:
            return False
        self._trial_in_flight = False
        self.consecutive_failures += 1
        threshold = 1 if self.ejections else self.config.consecutive_failures
        if self.consecutive_failures < threshold:
            return False
        backoff = min(self.config.base_ejection_s * (2**self.ejections), self.config.max_ejection_s)
        self.ejections += 1
        self.total_ejections += 1
        self.ejected_at = self.now()
        self.ejected_until = self.ejected_at + backoff
        return True
