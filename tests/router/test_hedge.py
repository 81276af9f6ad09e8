from __future__ import annotations

import asyncio
import math
import random

import grpc
import pytest
from prometheus_client import CollectorRegistry

from services.router.attempt import AttemptFailed
from services.router.config import HedgeConfig, RouterConfig
from services.router.hedge import AdaptiveDelay, Hedger, first_answer
from services.router.metrics import RouterMetrics
from services.router.refusal import Refusal


def adaptive(**settings: float) -> AdaptiveDelay:
    return AdaptiveDelay(HedgeConfig(min_samples=10, floor_s=0.1, ceiling_s=2.0, **settings))


def test_delay_is_the_ceiling_until_there_are_enough_samples() -> None:
    delay = adaptive()
    for _ in range(9):
        delay.observe(0.3)
    assert delay.delay_s() == 2.0
    delay.observe(0.3)
    assert delay.delay_s() == pytest.approx(0.3)


def test_delay_is_the_percentile_of_recent_samples() -> None:
    delay = adaptive(percentile=95)
    for i in range(1, 101):  # 0.01 .. 1.00 s
        delay.observe(i / 100)
    assert delay.delay_s() == pytest.approx(0.95)
    for _ in range(200):  # the window forgets the old, slower samples
        delay.observe(0.5)
    assert delay.delay_s() == pytest.approx(0.5)


def test_delay_is_clamped_to_floor_and_ceiling() -> None:
    fast, slow = adaptive(), adaptive()
    for _ in range(20):
        fast.observe(0.001)
        slow.observe(9.0)
    assert fast.delay_s() == 0.1
    assert slow.delay_s() == 2.0


def test_fixed_delay_ignores_samples() -> None:
    delay = adaptive(delay_s=0.7)
    for _ in range(50):
        delay.observe(0.01)
    assert delay.delay_s() == 0.7


def test_floor_above_ceiling_is_refused() -> None:
    with pytest.raises(ValueError, match="floor_s"):
        HedgeConfig(floor_s=3, ceiling_s=1)


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def hedger(**config: object) -> tuple[Hedger, RouterMetrics]:
    metrics = RouterMetrics(CollectorRegistry())
    return Hedger(RouterConfig.model_validate(config), metrics, clock=Clock()), metrics


def test_budget_caps_hedges_to_a_fraction_of_requests() -> None:
    hedges, metrics = hedger(hedge={"budget_ratio": 0.05, "budget_burst": 2})
    sent = 0
    for _ in range(1000):
        hedges.on_request("m")
        sent += hedges.try_spend("m")  # every request would like a hedge
    assert 50 <= sent <= 52  # 5 % of the requests plus the burst
    assert metrics.hedges.labels("m")._value.get() == sent


def test_per_model_override_turns_hedging_off_for_that_model_only() -> None:
    hedges, _ = hedger(hedge={"delay_s": 0.2}, model_hedges={"quiet": {"enabled": False}})
    assert hedges.delay_s("quiet") is None
    assert hedges.delay_s("other") == 0.2
    with pytest.raises(ValueError):
        RouterConfig.model_validate({"model_hedges": {"m": {"budget_ratio": -1}}})


class FakeAttempt:
    """Answers (or fails) after `after_s`; records whether it failed."""

    def __init__(self, after_s: float, answer: bytes | None = b"x", code: object = None) -> None:
        self.hedge = False
        self.failure: AttemptFailed | None = None
        self.first = asyncio.ensure_future(self._answer(after_s, answer, code))

    async def _answer(self, after_s: float, answer: bytes | None, code: object) -> bytes | None:
        await asyncio.sleep(after_s)
        if code is not None:
            refusal = Refusal(code, "failed")  # type: ignore[arg-type]
            raise AttemptFailed(refusal, retryable=code != grpc.StatusCode.INVALID_ARGUMENT)
        return answer

    def failed(self, failure: AttemptFailed) -> None:
        self.failure = failure


async def test_a_slow_primary_is_hedged_and_the_hedge_wins() -> None:
    primary, hedge = FakeAttempt(5.0, b"slow"), FakeAttempt(0.01, b"fast")
    winner, first = await first_answer(primary, 0.05, lambda: hedge)  # type: ignore[arg-type]
    assert winner is hedge and first == b"fast"
    primary.first.cancel()


async def test_no_hedge_before_the_delay_or_when_off() -> None:
    launched: list[FakeAttempt] = []

    def launch() -> FakeAttempt:
        launched.append(FakeAttempt(0.0))
        return launched[-1]

    for delay in (1.0, None):
        primary = FakeAttempt(0.05, b"p")
        winner, _ = await first_answer(primary, delay, launch)  # type: ignore[arg-type]
        assert winner is primary
    assert not launched


async def test_a_failed_attempt_leaves_the_other_to_answer() -> None:
    primary = FakeAttempt(0.1, code=grpc.StatusCode.UNAVAILABLE)
    hedge = FakeAttempt(0.2, b"h")
    winner, _ = await first_answer(primary, 0.01, lambda: hedge)  # type: ignore[arg-type]
    assert winner is hedge and primary.failure is not None


async def test_failures_of_every_attempt_are_raised_for_the_retry_loop() -> None:
    primary = FakeAttempt(0.0, code=grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(AttemptFailed):  # failed before the delay: no hedge, a retry
        await first_answer(primary, 1.0, lambda: None)  # type: ignore[arg-type]
    primary = FakeAttempt(0.1, b"p")
    bad = FakeAttempt(0.0, code=grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(AttemptFailed):  # a caller error ends the race at once
        await first_answer(primary, 0.01, lambda: bad)  # type: ignore[arg-type]
    primary.first.cancel()


def test_delay_matches_the_percentile_of_the_window_as_it_slides() -> None:
    """The window is kept sorted as samples come and go; each read must equal the
    nearest-rank percentile of exactly the last `window` samples, repeats included."""
    rng = random.Random(7)
    delay = adaptive(percentile=90, window=25)
    recent: list[float] = []
    for _ in range(400):
        sample = rng.choice((0.2, 0.5, 0.7)) if rng.random() < 0.3 else rng.uniform(0.1, 2.0)
        delay.observe(sample)
        recent = [*recent, sample][-25:]
        if len(recent) >= 10:
            ordered = sorted(recent)
            expected = ordered[math.ceil(0.9 * len(ordered)) - 1]
            assert delay.delay_s() == pytest.approx(min(2.0, max(0.1, expected)))
