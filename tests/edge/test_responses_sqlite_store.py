"""The SQLite response store: scoped by key, expiring, bounded, durable across reopening,
shared by two stores on one file, and a 503 when the file cannot be used."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from services.catalog import Catalog
from services.edge.errors import OpenAIError
from services.edge.responses.backends import build_store
from services.edge.responses.sqlite_store import SqliteResponseStore
from services.edge.responses.store import MemoryResponseStore, StoredResponse

Opener = Callable[..., SqliteResponseStore]


def _record(response_id: str, text: str = "hi") -> StoredResponse:
    output = [{"type": "message", "content": [{"type": "output_text", "text": text}]}]
    return StoredResponse({"id": response_id, "output": output}, [{"role": "user"}], [])


@pytest.fixture
async def open_store(tmp_path: Path) -> AsyncIterator[Opener]:
    opened: list[SqliteResponseStore] = []

    def open_(path: Path = tmp_path / "responses.sqlite3", **kwargs: float) -> SqliteResponseStore:
        settings = {"ttl_s": 60.0, "max_items": 100, **kwargs}
        store = SqliteResponseStore(
            path, ttl_s=settings["ttl_s"], max_items=int(settings["max_items"])
        )
        opened.append(store)
        return store

    yield open_
    for store in opened:
        await store.close()


async def test_put_get_delete(open_store: Opener) -> None:
    store = open_store()
    record = _record("r1", "hello")
    await store.put("k", record)
    assert await store.get("k", "r1") == record
    assert await store.delete("k", "r1")
    assert await store.get("k", "r1") is None
    assert not await store.delete("k", "r1")


async def test_scoped_by_key(open_store: Opener) -> None:
    store = open_store()
    await store.put("alice", _record("r"))
    assert await store.get("bob", "r") is None
    assert not await store.delete("bob", "r")
    assert await store.get("alice", "r") is not None


async def test_expires_after_ttl(open_store: Opener) -> None:
    store = open_store(ttl_s=0.05)
    await store.put("k", _record("r"))
    assert await store.get("k", "r") is not None
    await asyncio.sleep(0.1)
    assert await store.get("k", "r") is None


async def test_expired_rows_are_purged_on_write(open_store: Opener, tmp_path: Path) -> None:
    store = open_store(ttl_s=0.05)
    await store.put("k", _record("old"))
    await asyncio.sleep(0.1)
    await store.put("k", _record("new"))
    with sqlite3.connect(tmp_path / "responses.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM responses").fetchone()[0] == 1


async def test_bounded_oldest_first(open_store: Opener) -> None:
    store = open_store(max_items=2)
    for i in range(3):
        await store.put("k", _record(f"r{i}"))
    assert await store.get("k", "r0") is None
    assert await store.get("k", "r1") is not None
    assert await store.get("k", "r2") is not None


async def test_survives_reopening_the_file(open_store: Opener) -> None:
    first = open_store()
    await first.put("k", _record("r", "kept"))
    await first.close()
    again = await open_store().get("k", "r")
    assert again is not None and again.response["output"][0]["content"][0]["text"] == "kept"


async def test_two_stores_share_one_file(open_store: Opener, tmp_path: Path) -> None:
    one, two = open_store(), open_store()
    await one.put("k", _record("a"))
    assert await two.get("k", "a") is not None
    await two.put("k", _record("b"))
    assert await one.get("k", "b") is not None
    assert await two.delete("k", "a")
    assert await one.get("k", "a") is None
    with sqlite3.connect(tmp_path / "responses.sqlite3") as db:  # readers never block writers
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_unusable_path_is_503(open_store: Opener, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    store = open_store(blocker / "responses.sqlite3")
    for call in (store.put("k", _record("r")), store.get("k", "r"), store.delete("k", "r")):
        with pytest.raises(OpenAIError) as err:
            await call
        assert err.value.status == 503 and err.value.code == "store_unavailable"


def test_build_store_choice(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite3"
    assert isinstance(build_store(None, ttl_s=1, max_items=1), MemoryResponseStore)
    assert isinstance(build_store(None, ttl_s=1, max_items=1, db_path=db), SqliteResponseStore)
    catalog = Catalog.model_validate({"models": [{"id": "m"}], "redis": {"url": "redis://x"}})
    chosen = build_store(catalog, ttl_s=1, max_items=1, db_path=db)
    assert type(chosen).__name__ == "RedisResponseStore"
