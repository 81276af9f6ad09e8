from __future__ import annotations

from collections.abc import Sequence

from services.router.policies.base import LoadBalancingPolicy, RouteRequest
from services.router.replica import Replica


class LeastLoadPolicy(LoadBalancingPolicy):
    def select(self, candidates: Sequence[Replica], request: RouteRequest) -> Replica:
        return min(candidates, key=lambda r: (r.load_score(), r.requests))
