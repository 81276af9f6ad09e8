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

The same sync pushes the slots this router's streams hold per (class, tenant) and returns
the other routers' (FleetSlots), so fair-share preemption weighs shares over the fleet's
slots: a tenant served elsewhere does not take this router's slots too. A router that
stops syncing drops out after HOLDINGS_TTL_INTERVALS; without Redis, only local slots count.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable
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
HOLDINGS_TTL_INTERVALS = 4  # a router's held slots count this many sync intervals

Holdings = Counter[tuple[int, str]]  # held slots per (class rank, tenant)

# KEYS: counters (hash), last charged (hash, Redis seconds), base, held slots (hash:
# router -> JSON {"rank:tenant": n}), routers (zset: router -> last sync, Redis seconds).
# ARGV: idle seconds, rebase threshold, router id, its held slots (JSON), their lifetime
# in seconds, the base the floors were taken at, then tenant, delta, floor ('' none).
# Returns {base and counters (flat), the other routers' held slots summed (JSON)}.
_SYNC = """
local clock = redis.call('TIME')
local now = tonumber(clock[1])
local idle = tonumber(ARGV[1])
local base = tonumber(redis.call('GET', KEYS[3]) or '0')
local shift = base - tonumber(ARGV[6])
for i = 7, #ARGV, 3 do
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
table.insert(values, 1, tostring(base))

-- Held slots: this router's replace its last; routers silent too long are dropped.
local router, precise = ARGV[3], now + tonumber(clock[2]) / 1e6
redis.call('HSET', KEYS[4], router, ARGV[4])
redis.call('ZADD', KEYS[5], precise, router)
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', precise - tonumber(ARGV[5]))) do
  redis.call('HDEL', KEYS[4], gone)
end
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', precise - tonumber(ARGV[5]))
local others = {}
local held = redis.call('HGETALL', KEYS[4])
for i = 1, #held, 2 do
  if held[i] ~= router then
    for slot, n in pairs(cjson.decode(held[i + 1])) do others[slot] = (others[slot] or 0) + n end
  end
end
for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, math.ceil(idle)) end
return {values, cjson.encode(others)}
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


@dataclass
class FleetSlots:
    """A model's held slots on the other routers at the last sync (none without Redis), and
    where this router's own are counted, read at each sync."""

    local: Callable[[], Holdings] = Counter
    others: Holdings = field(default_factory=Counter)

    def push(self) -> str:
        return json.dumps({f"{rank}:{tenant}": n for (rank, tenant), n in self.local().items()})

    def settle(self, reply: bytes) -> None:
        self.others = Counter()
        for slot, n in json.loads(reply).items():
            rank, tenant = slot.split(":", 1)
            self.others[(int(rank), tenant)] = n


class FairShare:
    """Syncs every model's counters with Redis each `share_interval_s` (one round trip)."""

    def __init__(self, settings: RedisSettings, config: FairConfig, metrics: QueueMetrics) -> None:
        self._client = connect(settings)
        self._sha = hashlib.sha1(_SYNC.encode()).hexdigest()
        self._prefix = f"{settings.prefix}:fair"
        self._config = config
        self._metrics = metrics
        self._router = uuid.uuid4().hex  # this router's held slots in Redis, until it stops
        self._models: dict[str, SharedCounters] = {}
        self._slots: dict[str, FleetSlots] = {}
        self._failing = False
        self._task: asyncio.Task[None] | None = None

    def counters(self, model: str) -> SharedCounters:
        return self._models.setdefault(model, SharedCounters())

    def slots(self, model: str) -> FleetSlots:
        return self._slots.setdefault(model, FleetSlots())

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
            (self._keys(model), self._args(model, push))
            for (model, _), push in zip(models, pushes, strict=True)
        ]
        try:
            replies = await self._round_trip(calls)
        except (RedisError, OSError) as exc:
            for (model, counters), push in zip(models, pushes, strict=True):
                counters.restore(push)
                self.slots(model).others = Counter()  # unknown now: local slots only
            self._failed(exc)
            return
        self._metrics.share_syncs.labels("ok").inc()
        if self._failing:
            log.info("fair share: Redis is back; counters are the fleet's again")
            self._failing = False
        for (model, counters), (values, others) in zip(models, replies, strict=True):
            counters.settle(_pairs(values[1:]), float(values[0]))
            self.slots(model).settle(others)

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
        return [key, f"{key}:seen", f"{key}:base", f"{key}:held", f"{key}:routers"]

    def _args(self, model: str, push: Push) -> list[str | float]:
        ttl = HOLDINGS_TTL_INTERVALS * self._config.share_interval_s
        held = (self._router, self.slots(model).push(), ttl)
        return [self._config.share_idle_s, REBASE_AT, *held, *push.args()]


def _pairs(flat: list[bytes]) -> dict[str, float]:
    return {flat[i].decode(): float(flat[i + 1]) for i in range(0, len(flat), 2)}
