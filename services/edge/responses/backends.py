"""Which response store an edge uses: Redis when the catalog names one (several edge
replicas share it), else a SQLite file when `responses_db` is set (`tera run` sets one
under its cache folder), else memory (lost when the edge stops)."""

from __future__ import annotations

from pathlib import Path

from services.catalog import Catalog
from services.edge.responses.sqlite_store import SqliteResponseStore
from services.edge.responses.store import MemoryResponseStore, RedisResponseStore, ResponseStore


def build_store(
    catalog: Catalog | None, *, ttl_s: float, max_items: int, db_path: Path | None = None
) -> ResponseStore:
    settings = catalog.redis if catalog else None
    if settings is not None:
        # Records are larger than limiter counters: allow them more than the limiter's
        # timeout.
        timeout_s = max(settings.timeout_s, 1.0)
        return RedisResponseStore(
            settings.url, prefix=settings.prefix, timeout_s=timeout_s, ttl_s=ttl_s
        )
    if db_path is not None:
        return SqliteResponseStore(db_path, ttl_s=ttl_s, max_items=max_items)
    return MemoryResponseStore(ttl_s=ttl_s, max_items=max_items)
