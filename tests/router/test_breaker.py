from __future__ import annotations

from services.router.breaker import CircuitBreaker
from services.router.config import BreakerConfig


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make() -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    config = BreakerConfig(consecutive_failures=3, base_ejection_s=1.0, max_ejection_s=4.0)
    return CircuitBreaker(config, _clock=clock), clock


def test_ejects_after_consecutive_failures_only() -> None:
    breaker, _ = make()
    assert not breaker.on_failure() and not breaker.on_failure()
    breaker.on_success()
    assert not breaker.on_failure() and not breaker.on_failure()
    assert breaker.allows()
    assert breaker.on_failure()
    assert not breaker.allows()


def test_half_open_trickle_then_growing_backoff_then_readmission() -> None:
    breaker, clock = make()
    for _ in range(3):
        breaker.on_failure()
    clock.t += 1.01
    assert breaker.allows() and breaker.half_open
    breaker.on_attempt()
    assert not breaker.allows(), "one trial request at a time while half-open"
    assert breaker.awaiting_trial, "held back by the trial alone: a failed-over call may pass"
    assert breaker.on_failure(), "a failed trial ejects again at once"
    clock.t += 1.5
    assert not breaker.allows(), "the second ejection lasts longer (2 s)"
    assert not breaker.awaiting_trial, "an ejected replica is held back for all calls"
    clock.t += 0.6
    assert breaker.allows()
    breaker.on_attempt()
    breaker.on_success()
    assert breaker.allows() and not breaker.half_open and breaker.ejections == 0


def test_backoff_is_capped() -> None:
    breaker, clock = make()
    for _ in range(3):
        breaker.on_failure()
    for _ in range(6):
        clock.t = breaker.ejected_until
        breaker.on_failure()
    assert breaker.ejected_until - clock.t == 4.0
