"""Power of two choices: near least-load balance without herding on one replica."""

from __future__ import annotations

import random
from collections.abc import Sequence

from services.router.policies.base import LoadBalancingPolicy, R, RouteRequest


class PowerOfTwoChoicesPolicy(LoadBalancingPolicy):
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def select(self, candidates: Sequence[R], request: RouteRequest) -> R:
        if len(candidates) == 1:
            return candidates[0]
        a, b = self._rng.sample(list(candidates), 2)
        return a if a.load_score() <= b.load_score() else b
