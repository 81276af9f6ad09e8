"""Limits, usage and fair-queue class for the router's own tenants (direct gRPC callers).

The same limiter as the edge's, on the same store keys: with the catalog's `redis` set,
a key's requests and tokens per minute and its concurrent streams are one budget across
its HTTP traffic (through any edge) and its gRPC traffic (through any router). Tokens are
reserved from the request (the edge's estimate: prompt characters / 4 + max_tokens, per
choice) and settled with the usage the stream reports. Over a limit: RESOURCE_EXHAUSTED
with Retry-After in the trailers, as the edge answers 429 + Retry-After.

The fair queue reads the caller's tenant, weight, class and cost from metadata; for a
key's caller the router replaces whatever the caller sent with the key's own values, so
nobody can claim another tenant's share or a higher class. Callers the edge speaks for
were limited and billed at the edge and are only counted here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import CollectorRegistry, Counter

from services.catalog.schema import Redis as RedisSettings
from services.common import metadata
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.router.auth import Caller
from services.router.refusal import Refusal
from services.router.wire import model_of, usage_of
from services.tenancy.limits import Limiter, MemoryStore, OverLimit, estimate_tokens
from services.tenancy.usage import UsageLedger


class TenantLimits:
    def __init__(self, redis: RedisSettings | None, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "tera_router_tenant_calls",
            "Calls at the router by tenant and outcome (admitted, limited, or forwarded:"
            " an edge's user, limited at the edge).",
            ["tenant", "outcome"],
            registry=registry,
        )
        self.usage = UsageLedger(registry, service="router")
        if redis is not None:
            from services.tenancy.redis_store import RedisStore

            store: Any = RedisStore(redis)
        else:
            store = MemoryStore()
        self._limiter = Limiter(store, self.usage.limiter_failures)

    async def admitted(
        self,
        handler: Callable[[Any, Any], AsyncIterator[Any]],
        request: bytes,
        context: grpc.aio.ServicerContext,
        *,
        method: str,
        caller: Caller,
    ) -> AsyncIterator[Any]:
        """The handler's stream, once the caller's limits admit it."""
        name = caller.tenant.name
        if not caller.own:
            self.calls.labels(name, "forwarded").inc()
            async for item in handler(request, context):
                yield item
            return
        cost = estimated_cost(method, request)
        try:
            reservation = await self._limiter.reserve(caller.tenant, cost)
        except OverLimit as over:
            self.calls.labels(name, "limited").inc()
            model = _model(context.invocation_metadata(), request)
            self.usage.record(name, model, "RESOURCE_EXHAUSTED", 0, 0)
            refusal = Refusal(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"tenant over its limit: {over.message}",
                retry_after_s=over.retry_after_s,
            )
            trailing = refusal.trailing_metadata(over.retry_after_s)
            await context.abort(refusal.code, refusal.message, trailing_metadata=trailing)
        self.calls.labels(name, "admitted").inc()
        vouched = Vouched(context, caller.tenant.fair_metadata(cost))
        last, code = None, "CANCELLED"  # unless the stream ends otherwise
        try:
            async for item in handler(request, vouched):
                yield (last := item)
            code = "OK"
        except BaseException:
            code = _code_name(context)
            raise
        finally:
            usage = usage_of(method, last) or pb.Usage()
            await reservation.settle(usage.prompt_tokens + usage.completion_tokens)
            model = _model(vouched.invocation_metadata(), request)
            self.usage.record(name, model, code, usage.prompt_tokens, usage.completion_tokens)


class Vouched:
    """A call's context whose tenancy metadata is what the router vouches for (the key's
    tenant, weight, class and the router's cost estimate), not what the caller sent."""

    def __init__(self, context: grpc.aio.ServicerContext, tenancy: list[tuple[str, str]]) -> None:
        self._context = context
        sent = context.invocation_metadata() or ()
        self._metadata = (*((k, v) for k, v in sent if k not in metadata.TENANCY), *tenancy)

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self._metadata

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def estimated_cost(method: str, request: bytes) -> int:
    """Tokens to reserve for a call: the edge's estimate for a Generate request, nothing
    for speech (billed by requests, as at the edge) or bytes that do not parse (the
    engine refuses those)."""
    if not method.endswith("/Generate"):
        return 0
    try:
        message = pb.GenerateRequest.FromString(request)
    except DecodeError:
        return 0
    if message.prompt.HasField("token_ids"):
        prompt_chars = 4 * len(message.prompt.token_ids.ids)
    else:  # serialized bytes: at least the characters of every message and part
        prompt_chars = message.chat.ByteSize() + len(message.prompt.text)
    sampling = message.sampling
    max_tokens = sampling.max_tokens if sampling.HasField("max_tokens") else None
    return estimate_tokens(prompt_chars, max_tokens) * max(sampling.n, 1)


def _model(invocation: Any, request: bytes) -> str:
    return dict(invocation or ()).get(metadata.MODEL) or model_of(request)


def _code_name(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "CANCELLED"
