"""Retry policy: which failures are retried, backoff with jitter, and a retry budget."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import grpc

from services.router.bucket import TokenBucket
from services.router.config import RetryConfig

# Failures of the replica, not of the request: another replica may well succeed.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,  # an attempt's; the caller's: caller_deadline
        grpc.StatusCode.ABORTED,
    }
)

# Failures that count against a replica's health (a full queue is load, not a fault).
REPLICA_FAULTS = RETRYABLE - {grpc.StatusCode.RESOURCE_EXHAUSTED}


class RetryBudget(TokenBucket):
    """Each request deposits `budget_ratio` tokens, each retry spends one; a floor of
    min_retries_per_s tokens per second keeps retries possible at low traffic."""

    def __init__(self, config: RetryConfig, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(
            ratio=config.budget_ratio,
            floor_per_s=config.min_retries_per_s,
            cap=config.budget_burst,
            clock=clock,
        )


def backoff_s(attempt: int, config: RetryConfig) -> float:
    """Full jitter: uniform in [0, base * 2^(attempt-1)], capped."""
    ceiling = min(config.backoff_max_s, config.backoff_base_s * 2 ** (attempt - 1))
    return random.uniform(0, ceiling)
