"""Limit state in Redis, shared by every edge and router replica: the same GCRA as
MemoryStore, as one atomic Lua script using Redis's clock."""

from __future__ import annotations

import redis.asyncio as redis

from services.catalog.schema import Redis as RedisSettings
from services.tenancy.limits import WINDOW_S, Decision

_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + tonumber(ARGV[1]) * tonumber(ARGV[2])
if new_tat - now > tonumber(ARGV[3]) then
  return {0, tostring(tat - now), tostring(new_tat - now - tonumber(ARGV[3]))}
end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
return {1, tostring(new_tat - now), "0"}
"""

_GIVE_BACK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
local new_tat = math.max(now, tat - tonumber(ARGV[1]) * tonumber(ARGV[2]))
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
return 1
"""

_ACQUIRE = """
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], 3600)
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return 0
end
return 1
"""


def connect(settings: RedisSettings) -> redis.Redis:
    """A client for the catalog's Redis: each command, and connecting, bounded by its
    timeout, so an unreachable Redis costs a caller that long at most."""
    return redis.Redis.from_url(
        settings.url,
        socket_timeout=settings.timeout_s,
        socket_connect_timeout=settings.timeout_s,
    )


class RedisStore:
    def __init__(self, settings: RedisSettings) -> None:
        self._client = connect(settings)
        self._prefix = settings.prefix
        self._take = self._client.register_script(_TAKE)
        self._give_back = self._client.register_script(_GIVE_BACK)
        self._acquire = self._client.register_script(_ACQUIRE)

    def _key(self, key: str) -> str:
        return f"{self._prefix}:limit:{key}"

    async def take(self, key: str, cost: float, interval_s: float) -> Decision:
        allowed, ahead, retry = await self._take(
            keys=[self._key(key)], args=[cost, interval_s, WINDOW_S]
        )
        return Decision(bool(int(allowed)), float(ahead), float(retry))

    async def give_back(self, key: str, cost: float, interval_s: float) -> None:
        await self._give_back(keys=[self._key(key)], args=[cost, interval_s])

    async def acquire(self, key: str, limit: int) -> bool:
        return bool(int(await self._acquire(keys=[self._key(key)], args=[limit])))

    async def release(self, key: str) -> None:
        await self._client.decr(self._key(key))

    async def close(self) -> None:
        await self._client.aclose()
