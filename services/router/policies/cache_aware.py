"""Cache-aware routing: to the replica whose prefix cache holds most of the prompt, within
a load bound, so no replica becomes a hot spot.

Inputs: the request's prefix names (services.common.prefix_hash, sent by the caller in
metadata) and each replica's PrefixIndex, which the engine itself keeps current (stores
and evictions). Per request:

1. The load band: replicas whose load is at most `load_margin` above the least loaded
   one, or `load_factor` times it, whichever is larger. Only these may be chosen: a
   cached replica beyond the band loses its advantage (load escape).
2. Within the band, if any replica holds at least `min_match_chunks` of the prompt: the
   replica with the least work ahead of the call's first token, in prompt tokens (as
   Dynamo's KV router costs prefill and decode blocks): the prefill this router has
   queued there (calls not yet answered, services.router.replica.prefilling), plus the
   part of this prompt its cache lacks times `prefill_weight`, plus `call_tokens` per
   call in flight or waiting there. The weight prices what a greedy per-call estimate
   misses: a prompt prefilled where its prefix is not resident evicts another, whose
   next call then misses too (at 1, the vLLM bench's uniform cached tokens fell to
   0.87x the oracle's). Ties go to the longer match, then a hash of the prefix. So a
   cached prefix stays put while its replica's queue is shorter than a cold prefill
   elsewhere, a conversation whose newest turns live on a busy replica moves to a
   quieter one that holds its system prompt (a few chunks of prefill instead of a
   queue), and a hot prefix held by two replicas is shared by load. A pick that holds
   less than the longest match copies the prefix onto a quieter replica: counted as a
   hot spread.
3. No match anywhere (a new prefix group): the band's replica whose engine admitted
   the fewest calls recently (services.common.arrivals), so new groups fill the replicas
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

from services.common.prefix_hash import CHUNK_TOKENS
from services.router.cache_index import PrefixIndex
from services.router.policies.base import LoadBalancingPolicy, R, RouteRequest

CACHE_HIT = "cache_hit"
LOAD_ESCAPE = "load_escape"
HOT_SPREAD = "hot_spread"
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
    return getattr(replica, "arrivals_per_s", 0.0)


class CacheAwarePolicy(LoadBalancingPolicy):
    def __init__(
        self,
        *,
        load_margin: float = 8.0,
        load_factor: float = 1.5,
        min_match_chunks: int = 1,
        rate_tolerance: float = 0.25,
        call_tokens: float = 64.0,
        prefill_weight: float = 2.0,
    ) -> None:
        if call_tokens < 0 or prefill_weight < 0:
            raise ValueError(
                f"call_tokens and prefill_weight must be at least 0, not {call_tokens} "
                f"and {prefill_weight}"
            )
        self._margin = load_margin
        self._factor = load_factor
        self._min_match = max(1, min_match_chunks)
        self._rate_tolerance = rate_tolerance
        self._call_tokens = call_tokens
        self._prefill_weight = prefill_weight
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
            work = {r.address: self._work(r, names, matches, loads) for r in band}
            chosen = min(
                band,
                key=lambda r: (work[r.address], -matches[r.address], -_rendezvous(key, r.address)),
            )
            self.decisions[CACHE_HIT if matches[chosen.address] == best else HOT_SPREAD] += 1
            return chosen
        if max(matches.values()) >= self._min_match:
            self.decisions[LOAD_ESCAPE] += 1
            return self._spread(band, key, loads)
        self.decisions[NO_MATCH] += 1
        return self._spread(self._quietest(band), key, loads)

    def _work(
        self, r: Any, names: Sequence[int], matches: dict[str, int], loads: dict[str, float]
    ) -> float:
        """Prompt tokens of work ahead of this call's first token on `r`."""
        queued = getattr(r, "prefill_tokens", 0)
        uncached = (len(names) - matches[r.address]) * CHUNK_TOKENS
        return queued + self._prefill_weight * uncached + self._call_tokens * loads[r.address]

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
