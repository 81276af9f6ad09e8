"""Session/prefix affinity by consistent hashing on the routing key.

The edge sends a routing key (the `user` field, a session header, or a hash of the
prompt's first characters). The same key lands on the same replica while it is healthy
and not overloaded, which keeps its prefix cache warm; otherwise least-load decides.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence

from services.router.policies.base import LoadBalancingPolicy, R, RouteRequest
from services.router.policies.least_load import LeastLoadPolicy

VIRTUAL_NODES = 64


def _hash(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "big")


class AffinityPolicy(LoadBalancingPolicy):
    def __init__(self, overload_factor: float = 2.0) -> None:
        self._fallback = LeastLoadPolicy()
        self._overload_factor = overload_factor

    def select(self, candidates: Sequence[R], request: RouteRequest) -> R:
        if not request.routing_key:
            return self._fallback.select(candidates, request)
        chosen = self._ring_owner(candidates, request.routing_key)
        mean = sum(r.load_score() for r in candidates) / len(candidates)
        if chosen.load_score() > self._overload_factor * max(mean, 1.0):
            return self._fallback.select(candidates, request)
        return chosen

    @staticmethod
    def _ring_owner(candidates: Sequence[R], key: str) -> R:
        # Built per call from the live candidates: a handful of replicas, so cheap,
        # and never stale when replicas come and go.
        ring = sorted(
            (_hash(f"{r.address}#{i}"), r) for r in candidates for i in range(VIRTUAL_NODES)
        )
        points = [p for p, _ in ring]
        idx = bisect.bisect(points, _hash(key)) % len(ring)
        return ring[idx][1]
