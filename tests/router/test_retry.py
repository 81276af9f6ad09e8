from __future__ import annotations

import grpc

from services.router.config import RetryConfig
from services.router.refusal import caller_deadline
from services.router.retry import REPLICA_FAULTS, RETRYABLE, RetryBudget, backoff_s


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_caller_errors_are_never_retried() -> None:
    for code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNAUTHENTICATED,
    ):
        assert code not in RETRYABLE
    assert grpc.StatusCode.UNAVAILABLE in RETRYABLE
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in RETRYABLE
    assert grpc.StatusCode.RESOURCE_EXHAUSTED not in REPLICA_FAULTS


def test_budget_limits_retries_to_a_fraction_of_traffic() -> None:
    clock = Clock()
    budget = RetryBudget(RetryConfig(budget_ratio=0.25, min_retries_per_s=0), clock=clock)
    while budget.try_spend():  # use up the initial allowance
        pass
    for _ in range(100):
        budget.on_request()
    spent = 0
    while budget.try_spend():
        spent += 1
    assert spent == 25


def test_budget_floor_refills_over_time() -> None:
    clock = Clock()
    budget = RetryBudget(RetryConfig(budget_ratio=0, min_retries_per_s=2), clock=clock)
    while budget.try_spend():
        pass
    clock.t += 1.0
    assert budget.try_spend() and budget.try_spend() and not budget.try_spend()


def test_a_retry_paid_ahead_and_not_made_is_refunded_up_to_the_cap() -> None:
    budget = RetryBudget(RetryConfig(budget_ratio=0, min_retries_per_s=0, budget_burst=2))
    assert budget.try_spend() and budget.try_spend() and not budget.try_spend()
    budget.refund(1)
    assert budget.try_spend() and not budget.try_spend()
    budget.refund(5)  # never past the cap
    assert budget.try_spend() and budget.try_spend() and not budget.try_spend()


def test_backoff_is_jittered_and_capped() -> None:
    config = RetryConfig(backoff_base_s=0.1, backoff_max_s=0.3)
    samples = [backoff_s(5, config) for _ in range(200)]
    assert max(samples) <= 0.3 and min(samples) >= 0 and len(set(samples)) > 100


class _Context:
    """What caller_deadline reads of a ServicerContext."""

    def __init__(self, left: float | None) -> None:
        self.left = left

    def time_remaining(self) -> float | None:
        return self.left


def test_an_upstream_deadline_under_the_callers_is_the_callers() -> None:
    expired = grpc.StatusCode.DEADLINE_EXCEEDED
    # A moment left on grpc's copy of the deadline when the multiplexed stream expired.
    assert caller_deadline(expired, _Context(0.002))  # type: ignore[arg-type]
    assert not caller_deadline(grpc.StatusCode.INTERNAL, _Context(0.002))  # type: ignore[arg-type]
    # No caller deadline: the upstream's own, worth another replica.
    assert not caller_deadline(expired, _Context(None))  # type: ignore[arg-type]
