"""The response store's protocol, and two of its kinds: Redis (shared by every edge
replica) and a bounded in-memory map; a SQLite file is the third (sqlite_store.py), and
backends.py picks one. Each expires records after a TTL.

Records are keyed by tenant and id, so a key can reach only its own responses: another
key's id is simply not there (404). A store that fails answers 503, for the requests
that need it only.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import redis.asyncio as redis
from redis.exceptions import RedisError

from services.edge.errors import OpenAIError


@dataclass
class StoredResponse:
    response: dict[str, Any]  # the response object, as last sent
    input: list[dict[str, Any]]  # this request's input items
    context: list[dict[str, Any]]  # the items before them (earlier turns)

    def conversation(self) -> list[dict[str, Any]]:
        """What a follow-up (previous_response_id) continues from."""
        return [*self.context, *self.input, *self.response["output"]]


class ResponseStore(Protocol):
    async def put(self, tenant: str, record: StoredResponse) -> None: ...
    async def get(self, tenant: str, response_id: str) -> StoredResponse | None: ...
    async def delete(self, tenant: str, response_id: str) -> bool: ...
    async def close(self) -> None: ...


def unavailable() -> OpenAIError:
    return OpenAIError(
        503,
        "The response store is unavailable; requests with store=false and no "
        "previous_response_id still work.",
        type="service_unavailable",
        code="store_unavailable",
    )


def record_key(tenant: str, response_id: str) -> str:
    return hashlib.blake2b(f"{tenant}\0{response_id}".encode(), digest_size=16).hexdigest()


class MemoryResponseStore:
    def __init__(self, *, ttl_s: float, max_items: int) -> None:
        self._ttl_s = ttl_s
        self._max_items = max_items
        self._records: OrderedDict[str, tuple[float, StoredResponse]] = OrderedDict()

    async def put(self, tenant: str, record: StoredResponse) -> None:
        key = record_key(tenant, record.response["id"])
        self._records[key] = (time.monotonic() + self._ttl_s, record)
        self._records.move_to_end(key)
        while len(self._records) > self._max_items:
            self._records.popitem(last=False)

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        key = record_key(tenant, response_id)
        entry = self._records.get(key)
        if entry is not None and entry[0] < time.monotonic():
            del self._records[key]  # expired
            return None
        return None if entry is None else entry[1]

    async def delete(self, tenant: str, response_id: str) -> bool:
        return self._records.pop(record_key(tenant, response_id), None) is not None

    async def close(self) -> None:
        self._records.clear()


class RedisResponseStore:
    def __init__(self, url: str, *, prefix: str, timeout_s: float, ttl_s: float) -> None:
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._prefix = prefix
        self._ttl_ms = int(ttl_s * 1000)

    def _name(self, tenant: str, response_id: str) -> str:
        return f"{self._prefix}:response:{record_key(tenant, response_id)}"

    async def put(self, tenant: str, record: StoredResponse) -> None:
        name = self._name(tenant, record.response["id"])
        try:
            await self._client.set(name, json.dumps(asdict(record)), px=self._ttl_ms)
        except (RedisError, OSError) as exc:
            raise unavailable() from exc

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        try:
            raw = await self._client.get(self._name(tenant, response_id))
        except (RedisError, OSError) as exc:
            raise unavailable() from exc
        return None if raw is None else StoredResponse(**json.loads(raw))

    async def delete(self, tenant: str, response_id: str) -> bool:
        try:
            return bool(await self._client.delete(self._name(tenant, response_id)))
        except (RedisError, OSError) as exc:
            raise unavailable() from exc

    async def close(self) -> None:
        await self._client.aclose()
