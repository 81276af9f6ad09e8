"""Per-key limits: requests/min, tokens/min, concurrent streams.

Rates use GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp,
the "theoretical arrival time"): a key with R per minute gets one unit every 60/R s and
may run up to a minute's worth ahead. A request of cost n is admitted if, after adding
n units, the key is at most 60 s ahead of now. Tokens are reserved at admission from an
estimate (prompt characters / 4 + max_tokens) and settled with the real count at the
end. State lives in Redis when configured (one Lua script, atomic across edge and
router replicas)
and in-process otherwise. If Redis fails, traffic is admitted (fail open), logged and
counted: a limiter outage must not become an API outage.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import Counter

from services.tenancy.keys import Tenant

log = logging.getLogger("tera.tenancy.limits")

WINDOW_S = 60.0
# Completion tokens reserved when a request names no max_tokens (a 2048-token context / 4).
UNBOUNDED_COMPLETION_ESTIMATE = 2048 // 4


def estimate_tokens(prompt_chars: int, max_tokens: int | None) -> int:
    """Tokens to reserve before the real count is known (about 4 characters a token)."""
    return prompt_chars // 4 + 1 + (max_tokens or UNBOUNDED_COMPLETION_ESTIMATE)


class OverLimit(Exception):
    """A key is over one of its limits: each door answers it in its own protocol (the
    edge a 429, the router RESOURCE_EXHAUSTED), with Retry-After and these headers."""

    def __init__(
        self, message: str, *, code: str, retry_after_s: int, headers: dict[str, str]
    ) -> None:
        super().__init__(message)
        self.message, self.code, self.retry_after_s = message, code, retry_after_s
        self.headers = {**headers, "Retry-After": str(retry_after_s)}


@dataclass
class Decision:
    allowed: bool
    ahead_s: float  # how far the key's schedule runs ahead of now (after an admission)
    retry_after_s: float = 0.0  # when denied: how long until this request would fit


class RateStore(Protocol):
    async def take(self, key: str, cost: float, interval_s: float) -> Decision: ...
    async def give_back(self, key: str, cost: float, interval_s: float) -> None: ...
    async def acquire(self, key: str, limit: int) -> bool: ...
    async def release(self, key: str) -> None: ...


class MemoryStore:
    def __init__(self) -> None:
        self._tat: dict[str, float] = {}
        self._active: dict[str, int] = {}

    async def take(self, key: str, cost: float, interval_s: float) -> Decision:
        now = time.monotonic()
        tat = max(self._tat.get(key, now), now)
        new_tat = tat + cost * interval_s
        if new_tat - now > WINDOW_S:
            return Decision(False, tat - now, new_tat - now - WINDOW_S)
        self._tat[key] = new_tat
        return Decision(True, new_tat - now)

    async def give_back(self, key: str, cost: float, interval_s: float) -> None:
        now = time.monotonic()
        if key in self._tat:
            self._tat[key] = max(now, self._tat[key] - cost * interval_s)

    async def acquire(self, key: str, limit: int) -> bool:
        if self._active.get(key, 0) >= limit:
            return False
        self._active[key] = self._active.get(key, 0) + 1
        return True

    async def release(self, key: str) -> None:
        self._active[key] = max(0, self._active.get(key, 0) - 1)


@dataclass
class Reservation:
    """What one request holds: a concurrency slot and a token reservation."""

    limiter: Limiter
    tenant: Tenant
    reserved_tokens: int = 0
    holds_slot: bool = False
    headers: dict[str, str] = field(default_factory=dict)

    async def settle(self, used_tokens: int | None) -> None:
        """Releases the slot and corrects the token reservation with the real count."""
        if self.holds_slot:
            await self.limiter.store_call("release", f"con:{self.tenant.name}")
        per_min = self.tenant.limits.tokens_per_minute
        if per_min and used_tokens is not None and used_tokens != self.reserved_tokens:
            diff = used_tokens - self.reserved_tokens
            interval = WINDOW_S / per_min
            op = "take" if diff > 0 else "give_back"
            await self.limiter.store_call(op, f"tok:{self.tenant.name}", abs(diff), interval)


class Limiter:
    def __init__(self, store: RateStore, failures: Counter) -> None:
        self._store = store
        self._failures = failures

    async def reserve(self, tenant: Tenant, estimated_tokens: int) -> Reservation:
        limits = tenant.limits
        reservation = Reservation(self, tenant)
        if limits.requests_per_minute:
            decision = await self._rate(f"req:{tenant.name}", 1, limits.requests_per_minute)
            reservation.headers |= _headers("requests", limits.requests_per_minute, decision)
            if not decision.allowed:
                raise _over(
                    f"requests per minute ({limits.requests_per_minute})",
                    decision,
                    reservation.headers,
                )
        if limits.tokens_per_minute:
            cost = min(estimated_tokens, limits.tokens_per_minute)
            decision = await self._rate(f"tok:{tenant.name}", cost, limits.tokens_per_minute)
            reservation.headers |= _headers("tokens", limits.tokens_per_minute, decision)
            if not decision.allowed:
                raise _over(
                    f"tokens per minute ({limits.tokens_per_minute})", decision, reservation.headers
                )
            reservation.reserved_tokens = cost
        if limits.max_concurrent:
            # None: the store failed and the request is admitted without a slot, so
            # nothing is released for it later (a release would free someone else's).
            acquired = await self.store_call("acquire", f"con:{tenant.name}", limits.max_concurrent)
            if acquired is False:
                await reservation.settle(0)
                raise OverLimit(
                    f"Too many concurrent requests for this key (limit {limits.max_concurrent}).",
                    code="concurrency_limit_exceeded",
                    retry_after_s=1,
                    headers=reservation.headers,
                )
            reservation.holds_slot = acquired is True
        return reservation

    async def _rate(self, key: str, cost: float, per_minute: int) -> Decision:
        fallback = Decision(True, 0.0)
        return await self.store_call("take", key, cost, WINDOW_S / per_minute, default=fallback)

    async def store_call(self, op: str, *args: object, default: object = None) -> object:
        try:
            return await getattr(self._store, op)(*args)
        except Exception as exc:  # Redis down or slow: fail open
            self._failures.inc()
            log.warning("rate-limit store failed (%s: %s); admitting", type(exc).__name__, exc)
            return default


def _headers(dimension: str, limit: int, decision: Decision) -> dict[str, str]:
    interval = WINDOW_S / limit
    remaining = max(0, math.floor((WINDOW_S - decision.ahead_s) / interval + 1e-9))
    return {
        f"x-ratelimit-limit-{dimension}": str(limit),
        f"x-ratelimit-remaining-{dimension}": str(remaining),
        f"x-ratelimit-reset-{dimension}": _duration(max(decision.ahead_s, 0.0)),
    }


def _over(what: str, decision: Decision, headers: dict[str, str]) -> OverLimit:
    retry_after = max(1, math.ceil(decision.retry_after_s - 1e-9))
    return OverLimit(
        f"Rate limit reached for this key on {what}. Please try again in {retry_after}s.",
        code="rate_limit_exceeded",
        retry_after_s=retry_after,
        headers=headers,
    )


def _duration(seconds: float) -> str:
    """OpenAI's reset format: "1m30s", "20s", "0.5s"."""
    if seconds >= 60:
        minutes, rest = divmod(seconds, 60)
        return f"{int(minutes)}m{rest:.0f}s"
    return f"{seconds:.1f}s".replace(".0s", "s")
