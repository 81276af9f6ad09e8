"""Stored responses in a SQLite file: the embedded default that needs no server.

One connection, used from one worker thread, so the event loop never waits on the disk.
WAL mode and a busy timeout let several edge processes on one machine share the file.
Records carry a wall-clock expiry (so it holds across restarts), checked on read and
purged from time to time on write; past max_items the oldest records go first. Any
database error (a path that cannot be opened, a full disk) answers the 503 of a store
that is down.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from services.edge.responses.store import StoredResponse, record_key, unavailable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    expires_at REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_expiry ON responses (expires_at);
"""

# Expired records are swept at most this often (reads ignore them in between).
PURGE_EVERY_S = 60.0


class SqliteResponseStore:
    def __init__(self, path: Path, *, ttl_s: float, max_items: int) -> None:
        self._path = path
        self._ttl_s = ttl_s
        self._max_items = max_items
        self._db: sqlite3.Connection | None = None
        self._next_purge = 0.0
        self._closed = False
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="responses-db")

    async def _run(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._worker, fn, *args)
        except (sqlite3.Error, OSError) as exc:
            raise unavailable() from exc

    def _conn(self) -> sqlite3.Connection:
        """The connection, opened on first use (and again after a failed open)."""
        if self._db is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self._path, timeout=5.0, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
            except sqlite3.Error:
                db.close()
                raise
            self._db = db
        return self._db

    def _put(self, key: str, body: str) -> None:
        db = self._conn()
        now = time.time()
        with db:  # one transaction: the insert and the trimming it causes
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT OR REPLACE INTO responses (key, expires_at, body) VALUES (?, ?, ?)",
                (key, now + self._ttl_s, body),
            )
            if now >= self._next_purge:
                db.execute("DELETE FROM responses WHERE expires_at < ?", (now,))
                self._next_purge = now + min(PURGE_EVERY_S, self._ttl_s)
            # Everything older than the newest max_items records.
            db.execute(
                "DELETE FROM responses WHERE seq <= "
                "(SELECT seq FROM responses ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (self._max_items,),
            )

    def _get(self, key: str) -> str | None:
        row = (
            self._conn()
            .execute(
                "SELECT body FROM responses WHERE key = ? AND expires_at >= ?",
                (key, time.time()),
            )
            .fetchone()
        )
        return None if row is None else row[0]

    def _delete(self, key: str) -> bool:
        db = self._conn()
        with db:
            return db.execute("DELETE FROM responses WHERE key = ?", (key,)).rowcount > 0

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def put(self, tenant: str, record: StoredResponse) -> None:
        body = json.dumps(asdict(record))
        await self._run(self._put, record_key(tenant, record.response["id"]), body)

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        raw = await self._run(self._get, record_key(tenant, response_id))
        return None if raw is None else StoredResponse(**json.loads(raw))

    async def delete(self, tenant: str, response_id: str) -> bool:
        return bool(await self._run(self._delete, record_key(tenant, response_id)))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._run(self._close)
        finally:
            self._worker.shutdown(wait=False)
