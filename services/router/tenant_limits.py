"""Limits and usage for the router's own tenants (direct gRPC callers with a key).

The same limiter as the edge's, on the same store keys: with the catalog's `redis`
set, a key's requests per minute and concurrent streams are one budget across its HTTP
traffic (through any edge) and its gRPC traffic (through any router). Tokens per minute
are not charged here yet: the router relays responses as bytes and counts no tokens.
Callers the edge speaks for were limited at the edge and are only counted here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter

from services.catalog.schema import Limits
from services.catalog.schema import Redis as RedisSettings
from services.tenancy.keys import Tenant
from services.tenancy.limits import Limiter, MemoryStore, OverLimit

RETRY_AFTER = "retry-after"  # the trailer relay.py sets on its own refusals


class TenantLimits:
    def __init__(self, redis: RedisSettings | None, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "tera_router_tenant_calls",
            "Calls at the router by tenant and outcome (admitted, limited, or forwarded:"
            " an edge's user, limited at the edge).",
            ["tenant", "outcome"],
            registry=registry,
        )
        failures = Counter(
            "tera_router_limiter_failures",
            "Rate-limit store calls that failed (traffic admitted).",
            registry=registry,
        )
        if redis is not None:
            from services.tenancy.redis_store import RedisStore

            store: Any = RedisStore(redis)
        else:
            store = MemoryStore()
        self._limiter = Limiter(store, failures)

    async def admitted(
        self,
        stream: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
        *,
        tenant: str,
        limits: Limits | None,
    ) -> AsyncIterator[Any]:
        """stream, once the tenant's limits admit it (None: limited elsewhere)."""
        if limits is None:
            self.calls.labels(tenant, "forwarded").inc()
            async for item in stream:
                yield item
            return
        try:
            reservation = await self._limiter.reserve(Tenant(tenant, None, limits), 0)
        except OverLimit as over:
            self.calls.labels(tenant, "limited").inc()
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"tenant over its limit: {over.message}",
                trailing_metadata=((RETRY_AFTER, str(over.retry_after_s)),),
            )
        self.calls.labels(tenant, "admitted").inc()
        try:
            async for item in stream:
                yield item
        finally:
            await reservation.settle(None)
