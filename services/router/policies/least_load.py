from __future__ import annotations

from collections.abc import Sequence

from services.router.policies.base import LoadBalancingPolicy, R, RouteRequest


class LeastLoadPolicy(LoadBalancingPolicy):
    def select(self, candidates: Sequence[R], request: RouteRequest) -> R:
        return min(candidates, key=lambda r: (r.load_score(), r.requests))
