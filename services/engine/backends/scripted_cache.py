"""The stand-in's simulated prefix cache: an LRU of chunk names and a prefill cost.

Tokens are whitespace words (services.common.word_tokens). Prefill
is serialised, like one accelerator: a request waits for the prefills ahead of it, then
pays `prefill_ms_per_token` for each prompt token not already cached. Stores and
evictions go to the engine's PrefixCacheFeed, as vLLM's KV events do for the real one.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from services.common.prefix_hash import CHUNK_TOKENS, chunk_hashes
from services.engine.prefix_cache import PrefixCacheFeed


class SimulatedPrefixCache:
    def __init__(self, *, capacity_chunks: int, prefill_s_per_token: float) -> None:
        self.feed = PrefixCacheFeed()
        self._capacity = capacity_chunks
        self._cost = prefill_s_per_token
        self._lru: OrderedDict[int, None] = OrderedDict()
        self._prefill = asyncio.Lock()

    async def prefill(self, token_ids: list[int]) -> int:
        """Waits out the prompt's prefill; returns how many of its tokens were cached."""
        names = chunk_hashes(token_ids, limit=len(token_ids))
        async with self._prefill:
            hits = 0
            for name in names:
                if name not in self._lru:
                    break
                hits += 1
            cached = hits * CHUNK_TOKENS
            if self._cost > 0:
                await asyncio.sleep((len(token_ids) - cached) * self._cost)
            self._store(names)
        return cached

    def _store(self, names: list[int]) -> None:
        # The tail first, so the LRU evicts a prefix's tail before its head, as vLLM
        # frees a request's blocks.
        new = []
        for name in reversed(names):
            if name in self._lru:
                self._lru.move_to_end(name)
            else:
                self._lru[name] = None
                new.append(name)
        evicted = []
        while len(self._lru) > self._capacity:
            evicted.append(self._lru.popitem(last=False)[0])
        self.feed.stored(new)
        self.feed.removed(evicted)
