"""Cache-aware routing: to the replica whose prefix cache holds most of the prompt, within
a load bound, so no replica becomes a hot spot.

Inputs: the request's prefix names (services.common.prefix_hash, sent by the caller in
metadata) and each replica's PrefixIndex, which the engine itself keeps current (stores
and evictions). Per request:

1. The load band: replicas whose load is at most `load_margin` above the least loaded
   one, or `load_factor` times it, whichever is larger. Only these may be chosen: a
   cached replica beyond the band loses its advantage (load escape).
2. Within the band, the replica holding the longest prefix of the prompt (at least
   `min_match_chunks`); among equals, the least loaded, then a hash of the prefix. A
   replica holding all but the last `match_slack` of the longest match competes too, as
   if `slack_cost` calls busier: so a conversation whose newest turns live on a busy
   replica moves to a quieter one that holds its system prompt (a few chunks of prefill
   instead of a queue), and a hot prefix held by two replicas is shared by load, while
   small load differences leave conversations where their whole history is.
3. No match anywhere (a new prefix group): the band's replica whose engine admitted
   the fewest calls recently (services.router.arrivals), so new groups fill the replicas
   that the groups already placed keep quiet; rates within `rate_tolerance` of the
   lowest (or all near zero) tie, and ties go by rendezvous hashing of the prefix, so
   routers whose estimates differ a little, or an idle fleet, still make the same pick.
   A match only beyond the band (load escape): rendezvous over the band, so a hot
   prefix that escaped its first replica lands on the same second one, which then holds
   it too: the hot prefix spreads, instead of queueing. Without names: rendezvous of
   the routing key (no rates: nothing else would keep a keyed conversation in place).

Decisions made so far are counted by reason in `decisions`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

from services.router.arrivals import ArrivalRate
from services.router.cache_index import PrefixIndex
from services.router.policies.base import LoadBalancingPolicy, R, RouteRequest

CACHE_HIT = "cache_hit"
LOAD_ESCAPE = "load_escape"
NO_MATCH = "no_match"
NO_PREFIX = "no_prefix"

# Calls per second below which replicas count as equally idle: an idle fleet's decaying
# estimates, however unequal, decide nothing.
_IDLE_PER_S = 0.05


def _rendezvous(key: str, address: str) -> int:
    digest = hashlib.blake2b(f"{key}|{address}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _index(replica: Any) -> PrefixIndex | None:
    return getattr(replica, "prefix_index", None)


def _arrival_rate(replica: Any) -> float:
    arrivals: ArrivalRate | None = getattr(replica, "arrivals", None)
    return arrivals.per_s if arrivals is not None else 0.0


class CacheAwarePolicy(LoadBalancingPolicy):
    def __init__(
        self,
        *,
        load_margin: float = 8.0,
        load_factor: float = 1.5,
        min_match_chunks: int = 1,
        rate_tolerance: float = 0.25,
        match_slack: float = 0.1,
        slack_cost: float = 2.0,
    ) -> None:
        if not 0 <= match_slack < 1:
            raise ValueError(f"match_slack must be in [0, 1), not {match_slack}")
        self._margin = load_margin
        self._factor = load_factor
        self._min_match = max(1, min_match_chunks)
        self._rate_tolerance = rate_tolerance
        self._slack = match_slack
        self._slack_cost = slack_cost
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
            enough = max(self._min_match, best - int(best * self._slack))
            holders = [r for r in band if matches[r.address] >= enough]
            return min(holders, key=lambda r: self._cost(r, matches, best, loads, key))
        if max(matches.values()) >= self._min_match:
            self.decisions[LOAD_ESCAPE] += 1
            return self._spread(band, key, loads)
        self.decisions[NO_MATCH] += 1
        return self._spread(self._quietest(band), key, loads)

    def _cost(
        self, r: Any, matches: dict[str, int], best: int, loads: dict[str, float], key: str
    ) -> tuple[float, float, int]:
        short = self._slack_cost if matches[r.address] < best else 0.0
        return loads[r.address] + short, short, -_rendezvous(key, r.address)

    def _quietest(self, band: Sequence[R]) -> list[R]:
        """The replicas whose recent arrival rate ties with the lowest in the band."""
        rates = [(_arrival_rate(r), r) for r in band]
        limit = min(rate for rate, _ in rates) * (1 + self._rate_tolerance) + _IDLE_PER_S
        return [r for rate, r in rates if rate <= limit]

    @staticmethod
    def _match(replica: Any, names: Sequence[int]) -> int:
        index = _index(replica)
        return index.match(names) if index is not None else 0

    @staticmethod
    def _spread(band: Sequence[R], key: str | None, loads: dict[str, float]) -> R:
        if key is None:
            return min(band, key=lambda r: (loads[r.address], r.address))
        return max(band, key=lambda r: _rendezvous(key, r.address))
