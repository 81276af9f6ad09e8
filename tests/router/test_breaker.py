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


def fail(breaker: CircuitBreaker, started: float | None = None) -> bool:
    """A failed attempt, started now unless told."""
    return breaker.on_failure(started=breaker.now() if started is None else started)


def test_ejects_after_consecutive_failures_only() -> None:
    breaker, _ = make()
    assert not fail(breaker) and not fail(breaker)
    breaker.on_success()
    assert not fail(breaker) and not fail(breaker)
    assert breaker.allows()
    assert fail(breaker)
    assert not breaker.allows()


def test_half_open_trickle_then_growing_backoff_then_readmission() -> None:
    breaker, clock = make()
    for _ in range(3):
        fail(breaker)
    clock.t += 1.01
    assert breaker.allows() and breaker.half_open
    breaker.on_attempt()
    assert not breaker.allows(), "one trial request at a time while half-open"
    assert breaker.awaiting_trial, "held back by the trial alone: a failed-over call may pass"
    assert fail(breaker), "a failed trial ejects again at once"
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
        fail(breaker)
    for _ in range(6):
        clock.t = breaker.ejected_until
        fail(breaker)
    assert breaker.ejected_until - clock.t == 4.0


def test_failures_in_flight_at_an_ejection_do_not_escalate_it() -> None:
    """A crash cuts ten streams at one instant: one ejection of the base length."""
    breaker, clock = make()
    started = clock.t
    clock.t += 5.0
    ejected = [fail(breaker, started) for _ in range(10)]
    assert ejected == [False, False, True] + [False] * 7
    assert breaker.total_ejections == 1
    assert breaker.ejected_until - clock.t == 1.0
    clock.t = breaker.ejected_until
    breaker.on_attempt()
    assert fail(breaker), "a trial started after the ejection fails: ejected again"
    assert breaker.ejected_until - clock.t == 2.0, "doubled"


def test_a_late_failure_of_an_older_call_neither_ejects_nor_ends_the_trial() -> None:
    breaker, clock = make()
    started = clock.t
    for _ in range(3):
        fail(breaker)
    clock.t = breaker.ejected_until + 0.1
    breaker.on_attempt()
    assert not fail(breaker, started), "started before the ejection: already accounted for"
    assert breaker.awaiting_trial, "the trial still runs: a second may not start"
    assert breaker.total_ejections == 1
