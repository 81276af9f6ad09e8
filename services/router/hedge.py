"""Hedged first messages: after a per-model delay with no first message, the call is also
sent to a second replica and whichever answers first is kept. A token bucket per model
caps hedges to a fraction of its requests, so an all-slow fleet sees no hedge storm."""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from services.router.attempt import Attempt, AttemptFailed
from services.router.bucket import TokenBucket
from services.router.config import HedgeConfig, RouterConfig
from services.router.metrics import RouterMetrics


class AdaptiveDelay:
    """The hedge delay: fixed, or a percentile of the recent times to first message,
    clamped to [floor_s, ceiling_s] (the ceiling until there are min_samples)."""

    def __init__(self, config: HedgeConfig) -> None:
        self._config = config
        self._samples: deque[float] = deque()  # arrival order, to know which one leaves
        self._ordered: list[float] = []  # the same samples, sorted

    def observe(self, seconds: float) -> None:
        # Kept sorted as they come (two bisections) rather than sorted per request:
        # sorting the 200-sample window took 4.5 us a request, insort and del 1.1.
        while len(self._samples) >= self._config.window:
            del self._ordered[bisect.bisect_left(self._ordered, self._samples.popleft())]
        self._samples.append(seconds)
        bisect.insort(self._ordered, seconds)

    def delay_s(self) -> float:
        config = self._config
        if config.delay_s is not None:
            return config.delay_s
        ordered = self._ordered
        if len(ordered) < config.min_samples:
            return config.ceiling_s
        rank = math.ceil(config.percentile / 100 * len(ordered)) - 1  # nearest rank
        return min(config.ceiling_s, max(config.floor_s, ordered[max(rank, 0)]))


@dataclass
class _ModelHedging:
    config: HedgeConfig
    delay: AdaptiveDelay
    budget: TokenBucket


@dataclass
class Hedger:
    """Per-model hedging state: the delay, the budget, and the counts kept in metrics."""

    config: RouterConfig
    metrics: RouterMetrics
    clock: Callable[[], float] = time.monotonic
    _models: dict[str, _ModelHedging] = field(default_factory=dict)

    def _model(self, model: str) -> _ModelHedging:
        if (state := self._models.get(model)) is None:
            config = self.config.hedge_for(model)
            budget = TokenBucket(
                ratio=config.budget_ratio, floor_per_s=0, cap=config.budget_burst, clock=self.clock
            )
            state = self._models[model] = _ModelHedging(config, AdaptiveDelay(config), budget)
        return state

    def on_request(self, model: str) -> None:
        """Call once per request for a model that some replica serves."""
        self._model(model).budget.on_request()

    def observe(self, model: str, seconds: float) -> None:
        self._model(model).delay.observe(seconds)

    def delay_s(self, model: str) -> float | None:
        """Seconds to wait before hedging; None: hedging is off for this model."""
        state = self._model(model)
        return state.delay.delay_s() if state.config.enabled else None

    def try_spend(self, model: str) -> bool:
        if not self._model(model).budget.try_spend():
            return False
        self.metrics.hedges.labels(model).inc()
        return True

    def settle(self, model: str, winner: Attempt, opened: list[Attempt]) -> None:
        """Counts the race's outcome and cancels the attempts still waiting."""
        if winner.hedge:
            self.metrics.hedge_wins.labels(model).inc()
        for attempt in opened:
            if attempt is not winner and attempt.pending:
                self.metrics.hedge_cancelled.labels(model).inc()
                attempt.close(abandoned=True)


async def first_answer(
    primary: Attempt, delay_s: float | None, launch_hedge: Callable[[], Attempt | None]
) -> tuple[Attempt, bytes | None]:
    """Waits for the primary's first message; after delay_s without one, launches a hedge
    (when launch_hedge finds a replica and budget) and takes whichever answers first.

    A retryable failure of one attempt leaves the other to answer; when none answers, the
    last failure is raised, for the caller's retry loop to judge.
    """
    pending = {primary.first: primary}
    loop = asyncio.get_running_loop()
    hedge_at = None if delay_s is None else loop.time() + delay_s
    failure: AttemptFailed | None = None
    while pending:
        wait_s = None if hedge_at is None else max(0.0, hedge_at - loop.time())
        done, _ = await asyncio.wait(pending, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            hedge_at = None
            if (hedge := launch_hedge()) is not None:
                pending[hedge.first] = hedge
            continue
        for task in done:
            attempt = pending.pop(task)
            exc = task.exception()
            if exc is None:
                return attempt, task.result()
            if not isinstance(exc, AttemptFailed):
                raise exc
            attempt.failed(exc)
            failure = exc
            if not exc.retryable:
                raise exc
    assert failure is not None
    raise failure
