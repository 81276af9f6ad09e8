"""The engine's prefix-cache feed and the stand-in's simulated cache."""

from __future__ import annotations

import asyncio

from services.common.word_tokens import word_token_ids
from services.engine.backends.scripted_cache import SimulatedPrefixCache
from services.engine.prefix_cache import PrefixCacheFeed
from services.router.cache_index import PrefixIndex


async def _next(stream):
    return await asyncio.wait_for(anext(stream), 1.0)


async def test_watch_sends_a_snapshot_then_changes() -> None:
    feed = PrefixCacheFeed()
    feed.stored([1, 2, 3])
    stream = feed.watch()
    first = await _next(stream)
    assert first.reset and sorted(first.stored) == [1, 2, 3]
    feed.stored([2, 4])  # 2 is held twice now: only 4 is news
    feed.removed([2])  # one of two holders gone: still resident
    feed.removed([1])
    assert list((await _next(stream)).stored) == [4]
    assert list((await _next(stream)).removed) == [1]
    feed.cleared()
    assert (await _next(stream)).reset
    await stream.aclose()


async def test_simulated_cache_hits_evicts_and_reports_to_a_router_index() -> None:
    cache = SimulatedPrefixCache(capacity_chunks=6, prefill_s_per_token=0)
    index = PrefixIndex()
    stream = cache.feed.watch()
    index.apply(await _next(stream))
    prompt = word_token_ids(" ".join(f"w{i}" for i in range(64)))  # 4 chunks
    assert await cache.prefill(prompt) == 0
    assert await cache.prefill(prompt) == 64
    index.apply(await _next(stream))
    assert len(index) == 4
    other = word_token_ids(" ".join(f"x{i}" for i in range(64)))
    await cache.prefill(other)  # 8 chunks for 6 places: the first prompt's tail goes
    index.apply(await _next(stream))
    index.apply(await _next(stream))
    assert len(index) == 6
    assert await cache.prefill(prompt) == 32
    await stream.aclose()
