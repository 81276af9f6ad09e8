from __future__ import annotations

import itertools
from collections.abc import Sequence

from services.router.policies.base import LoadBalancingPolicy, R, RouteRequest


class RoundRobinPolicy(LoadBalancingPolicy):
    def __init__(self) -> None:
        self._counter = itertools.count()

    def select(self, candidates: Sequence[R], request: RouteRequest) -> R:
        ordered = sorted(candidates, key=lambda r: r.address)
        return ordered[next(self._counter) % len(ordered)]
