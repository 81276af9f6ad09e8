"""Cache-aware routing: to the replica whose prefix cache holds most of the prompt, within
a load bound, so no replica becomes a hot spot.

Inputs: the request's prefix names (services.common.prefix_hash, sent by the caller in
metadata) and each replica's PrefixIndex, which the engine itself keeps current (stores
and evictions). Per request:

1. The load band: replicas whose load is at most `load_margin` above the least loaded
   one, or `load_factor` times it, whichever is larger. Only these may be chosen: a
   cached replica beyond the band loses its advantage (load escape).
2. Within the band, the replica holding the longest prefix of the prompt (at least
   `min_match_chunks`); among equals, the least loaded, then a hash of the prefix.
3. No match in the band: rendezvous hashing of the prefix (or routing key) over the
   band. Every router makes the same pick for the same prompt, a new prefix group lands
   on one replica, and a hot prefix that escaped its first replica lands on the same
   second one, which then holds it too: the hot prefix spreads, instead of queueing.

Decisions made so far are counted by reason in `decisions`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

from services.router.cache_index import PrefixIndex
from services.router.policies.base import LoadBalancingPolicy, R, RouteRequest

CACHE_HIT = "cache_hit"
LOAD_ESCAPE = "load_escape"
NO_MATCH = "no_match"
NO_PREFIX = "no_prefix"


def _rendezvous(key: str, address: str) -> int:
    digest = hashlib.blake2b(f"{key}|{address}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _index(replica: Any) -> PrefixIndex | None:
    return getattr(replica, "prefix_index", None)


class CacheAwarePolicy(LoadBalancingPolicy):
    def __init__(
        self, *, load_margin: float = 8.0, load_factor: float = 1.5, min_match_chunks: int = 1
    ) -> None:
        self._margin = load_margin
        self._factor = load_factor
        self._min_match = max(1, min_match_chunks)
        self.decisions: Counter[str] = Counter()

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> CacheAwarePolicy:
        try:
            return cls(**options)
        except TypeError as exc:
            raise ValueError(f"cache_aware options: {exc}") from exc

    def select(self, candidates: Sequence[R], request: RouteRequest) -> R:
        loads = {r.address: r.load_score() for r in candidates}
        least = min(loads.values())
        limit = least + max(self._margin, (self._factor - 1) * least)
        band = [r for r in candidates if loads[r.address] <= limit]
        names = request.prefix_hashes
        key = str(names[0]) if names else request.routing_key
        if not names:
            self.decisions[NO_PREFIX] += 1
            return self._spread(band, key, loads)
        matches = {r.address: self._match(r, names) for r in candidates}
        best = max(matches[r.address] for r in band)
        if best >= self._min_match:
            self.decisions[CACHE_HIT] += 1
            holders = [r for r in band if matches[r.address] == best]
            return min(holders, key=lambda r: (loads[r.address], -_rendezvous(key, r.address)))
        escaped = max(matches.values()) >= self._min_match
        self.decisions[LOAD_ESCAPE if escaped else NO_MATCH] += 1
        return self._spread(band, key, loads)

    @staticmethod
    def _match(replica: Any, names: Sequence[int]) -> int:
        index = _index(replica)
        return index.match(names) if index is not None else 0

    @staticmethod
    def _spread(band: Sequence[R], key: str | None, loads: dict[str, float]) -> R:
        if key is None:
            return min(band, key=lambda r: (loads[r.address], r.address))
        return max(band, key=lambda r: _rendezvous(key, r.address))
