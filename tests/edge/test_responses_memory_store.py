"""The in-memory response store: bounded, expiring, scoped by key."""

from __future__ import annotations

import asyncio

from services.edge.responses.store import MemoryResponseStore, StoredResponse


def _record(response_id: str) -> StoredResponse:
    return StoredResponse({"id": response_id, "output": []}, [], [])


async def test_bounded_oldest_first() -> None:
    store = MemoryResponseStore(ttl_s=60, max_items=2)
    for i in range(3):
        await store.put("k", _record(f"r{i}"))
    assert await store.get("k", "r0") is None
    assert await store.get("k", "r2") is not None


async def test_expires_after_ttl() -> None:
    store = MemoryResponseStore(ttl_s=0.05, max_items=10)
    await store.put("k", _record("r"))
    assert await store.get("k", "r") is not None
    await asyncio.sleep(0.1)
    assert await store.get("k", "r") is None


async def test_scoped_by_key() -> None:
    store = MemoryResponseStore(ttl_s=60, max_items=10)
    await store.put("alice", _record("r"))
    assert await store.get("bob", "r") is None
    assert not await store.delete("bob", "r")
    assert await store.delete("alice", "r")
