"""Retry policy: which failures are retried, backoff with jitter, and a retry budget."""

from __future__ import annotations

import random
import time

import grpc

from services.router.config import RetryConfig

# Failures of the replica, not of the request: another replica may well succeed.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,  # the attempt's, not the caller's (checked first)
        grpc.StatusCode.ABORTED,
    }
)

# Failures that count against a replica's health (a full queue is load, not a fault).
REPLICA_FAULTS = RETRYABLE - {grpc.StatusCode.RESOURCE_EXHAUSTED}


class RetryBudget:
    """Token bucket: each request deposits `ratio` tokens, each retry spends one.

    A floor of min_per_s tokens per second keeps retries possible at low traffic.
    """

    def __init__(self, config: RetryConfig, clock: object = time.monotonic) -> None:
        self._ratio = config.budget_ratio
        self._floor_per_s = config.min_retries_per_s
        self._cap = config.budget_burst
        self._tokens = self._cap
        self._clock = clock
        self._last = clock()  # type: ignore[operator]

    def on_request(self) -> None:
        self._refill()
        self._tokens = min(self._cap, self._tokens + self._ratio)

    def try_spend(self) -> bool:
        self._refill()
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _refill(self) -> None:
        now = self._clock()  # type: ignore[operator]
        self._tokens = min(self._cap, self._tokens + (now - self._last) * self._floor_per_s)
        self._last = now


def backoff_s(attempt: int, config: RetryConfig) -> float:
    """Full jitter: uniform in [0, base * 2^(attempt-1)], capped."""
    ceiling = min(config.backoff_max_s, config.backoff_base_s * 2 ** (attempt - 1))
    return random.uniform(0, ceiling)
