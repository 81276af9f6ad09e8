"""The fair queue's tenant counters shared by every router, through Redis, with no round
trip on the dispatch path.

Each router charges its own copy of a model's counters at once and keeps what it
changed since its last sync: per tenant, the tokens it added (deltas) and the value it
lifted a newly active tenant to (a floor). Every `share_interval_s` one pipelined round
trip runs a script per model that applies them, `max(counter, floor) + delta`, and
returns the fleet's counters, which replace the router's copy (plus what it charged
meanwhile). Deltas add up across routers; floors do not: two routers lifting the same
tenant raise it once. So a router's view lags the fleet's by one interval plus a round
trip.

Counters stay bounded: the script subtracts the lowest counter from all once it passes
REBASE_AT, and adds it to a base the routers' floors are corrected by; a tenant no router
has charged for `share_idle_s` is forgotten (it comes back lifted, as a new one), and the
keys expire when no router syncs. Without Redis a router schedules on its own copy, and
pushes what it charged once Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import NoScriptError, RedisError

from services.catalog.schema import Redis as RedisSettings
from services.router.config import FairConfig
from services.router.fairness import TenantCounters
from services.router.queue_metrics import QueueMetrics
from services.tenancy.redis_store import connect

log = logging.getLogger("tera.router.fair_share")

REBASE_AT = 1e6  # weighted tokens; rebasing rewrites every counter, so not every sync

# KEYS: counters (hash), last charged (hash, Redis seconds), base. ARGV: idle seconds,
# rebase threshold, the base the floors were taken at, then tenant, delta, floor ('' none).
_SYNC = """
local now = tonumber(redis.call('TIME')[1])
local idle = tonumber(ARGV[1])
local base = tonumber(redis.call('GET', KEYS[3]) or '0')
local shift = base - tonumber(ARGV[3])
for i = 4, #ARGV, 3 do
  local value = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if ARGV[i + 2] ~= '' then value = math.max(value, tonumber(ARGV[i + 2]) - shift) end
  redis.call('HSET', KEYS[1], ARGV[i], tostring(value + tonumber(ARGV[i + 1])))
  redis.call('HSET', KEYS[2], ARGV[i], now)
end
local seen = redis.call('HGETALL', KEYS[2])
for i = 1, #seen, 2 do
  if now - tonumber(seen[i + 1]) > idle then
    redis.call('HDEL', KEYS[1], seen[i])
    redis.call('HDEL', KEYS[2], seen[i])
  end
end
local values = redis.call('HGETALL', KEYS[1])
local low = nil
for i = 2, #values, 2 do
  local v = tonumber(values[i])
  if low == nil or v < low then low = v end
end
if low ~= nil and low >= tonumber(ARGV[2]) then
  base = base + low
  redis.call('SET', KEYS[3], tostring(base))
  for i = 2, #values, 2 do
    values[i] = tostring(tonumber(values[i]) - low)
    redis.call('HSET', KEYS[1], values[i - 1], values[i])
  end
end
for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, math.ceil(idle)) end
table.insert(values, 1, tostring(base))
return values
"""


@dataclass
class Push:
    """What a router changed since its last sync."""

    deltas: dict[str, float] = field(default_factory=dict)
    floors: dict[str, float] = field(default_factory=dict)
    base: float = 0.0

    def args(self) -> list[str | float]:
        flat: list[str | float] = [self.base]
        for tenant in self.deltas.keys() | self.floors.keys():
            floor = self.floors.get(tenant)
            flat += [tenant, self.deltas.get(tenant, 0.0), "" if floor is None else floor]
        return flat


class SharedCounters(TenantCounters):
    """A model's counters: the fleet's at the last sync, plus this router's changes."""

    def __init__(self) -> None:
        super().__init__()
        self._push = Push()

    def add(self, tenant: str, amount: float) -> None:
        super().add(tenant, amount)
        deltas = self._push.deltas
        deltas[tenant] = deltas.get(tenant, 0.0) + amount

    def lift(self, tenant: str, floor: float) -> None:
        if floor <= self.get(tenant):
            return
        super().lift(tenant, floor)
        # Pushed as max(counter, floor) + delta: the floor is the lift less what the
        # router charged before it in this interval.
        lifted = self.get(tenant) - self._push.deltas.get(tenant, 0.0)
        self._push.floors[tenant] = max(self._push.floors.get(tenant, lifted), lifted)

    def take(self) -> Push:
        push, self._push = self._push, Push(base=self._push.base)
        return push

    def restore(self, push: Push) -> None:
        """The sync failed: its changes go with the next one."""
        for tenant, delta in push.deltas.items():
            self._push.deltas[tenant] = self._push.deltas.get(tenant, 0.0) + delta
        for tenant, floor in push.floors.items():
            self._push.floors[tenant] = max(self._push.floors.get(tenant, floor), floor)

    def settle(self, fleet: dict[str, float], base: float) -> None:
        """The fleet's counters (rebased to `base`), plus what was charged since the push."""
        shift = base - self._push.base
        self._push.base = base
        floors = {t: f - shift for t, f in self._push.floors.items()}
        self._push.floors = floors
        served = dict(fleet)
        for tenant in self._push.deltas.keys() | floors.keys():
            lifted = max(served.get(tenant, 0.0), floors.get(tenant, -float("inf")))
            served[tenant] = lifted + self._push.deltas.get(tenant, 0.0)
        self._served = served


class FairShare:
    """Syncs every model's counters with Redis each `share_interval_s` (one round trip)."""

    def __init__(self, settings: RedisSettings, config: FairConfig, metrics: QueueMetrics) -> None:
        self._client = connect(settings)
        self._sha = hashlib.sha1(_SYNC.encode()).hexdigest()
        self._prefix = f"{settings.prefix}:fair"
        self._config = config
        self._metrics = metrics
        self._models: dict[str, SharedCounters] = {}
        self._failing = False
        self._task: asyncio.Task[None] | None = None

    def counters(self, model: str) -> SharedCounters:
        return self._models.setdefault(model, SharedCounters())

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="fair share")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()

    async def _run(self) -> None:
        while True:
            await self.sync()
            await asyncio.sleep(self._config.share_interval_s)

    async def sync(self) -> None:
        models = list(self._models.items())
        if not models:
            return
        pushes = [counters.take() for _, counters in models]
        calls = [
            (self._keys(model), self._args(push))
            for (model, _), push in zip(models, pushes, strict=True)
        ]
        try:
            replies = await self._round_trip(calls)
        except (RedisError, OSError) as exc:
            for (_, counters), push in zip(models, pushes, strict=True):
                counters.restore(push)
            self._failed(exc)
            return
        self._metrics.share_syncs.labels("ok").inc()
        if self._failing:
            log.info("fair share: Redis is back; counters are the fleet's again")
            self._failing = False
        for (_, counters), reply in zip(models, replies, strict=True):
            counters.settle(_pairs(reply[1:]), float(reply[0]))

    async def _round_trip(self, calls: list[tuple[list[str], list[str | float]]]) -> list[Any]:
        try:
            return await self._pipeline(calls)
        except NoScriptError:  # a new or restarted Redis: taught the script, asked again
            await self._client.script_load(_SYNC)
            return await self._pipeline(calls)

    async def _pipeline(self, calls: list[tuple[list[str], list[str | float]]]) -> list[Any]:
        """Every model's script in one round trip."""
        async with self._client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(self._sha, len(keys), *keys, *args)
            return await pipe.execute()

    def _failed(self, exc: Exception) -> None:
        self._metrics.share_syncs.labels("failed").inc()
        if not self._failing:  # once per outage, not every interval
            log.warning("fair share: Redis unreachable, scheduling on local counters: %s", exc)
            self._failing = True

    def _keys(self, model: str) -> list[str]:
        key = f"{self._prefix}:{model}"
        return [key, f"{key}:seen", f"{key}:base"]

    def _args(self, push: Push) -> list[str | float]:
        return [self._config.share_idle_s, REBASE_AT, *push.args()]


def _pairs(flat: list[bytes]) -> dict[str, float]:
    return {flat[i].decode(): float(flat[i + 1]) for i in range(0, len(flat), 2)}
