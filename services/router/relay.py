"""Relays a server-streaming call to one replica, as opaque bytes, with retries.

Until the first response message reaches the caller, a failed attempt is retried on
another replica (jittered backoff, attempt cap, retry budget). After that the answer is
committed: a cut Generate stream is continued token-exactly on another replica
(resume.py); one that cannot be ends the caller's stream with the replica's error
status, so a truncated answer can never pass for a complete one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from services.common import metadata
from services.common.telemetry import (
    ATTEMPT,
    GEN_AI_REQUEST_MODEL,
    REPLICA,
    RETRY_REASON,
    tracing_enabled,
)
from services.router.config import RouterConfig
from services.router.metrics import RouterMetrics
from services.router.policies import LoadBalancingPolicy, RouteRequest, create_policy
from services.router.pool import ReplicaPool
from services.router.replica import Replica
from services.router.resume import Cut, Journal, Resumer, Upstream, open_journal
from services.router.retry import REPLICA_FAULTS, RETRYABLE, RetryBudget, backoff_s

log = logging.getLogger("tera.router.relay")

RETRY_AFTER = "retry-after"
# Caller metadata passed on to the engine. Trace context is re-injected by the gRPC
# instrumentation when the router traces; otherwise it is passed through untouched.
_FORWARDED_PREFIXES = ("tera-",) + (
    () if tracing_enabled() else ("traceparent", "tracestate", "baggage")
)
# Final answers after which the caller should come back later.
_TRY_LATER = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)


@dataclass
class Refusal(Exception):
    """The router ends the call itself: no replica could (or should) take it."""

    code: grpc.StatusCode
    message: str
    retry_after_s: int | None = None
    trailing: tuple[tuple[str, str], ...] = ()


class Relay:
    def __init__(self, pool: ReplicaPool, config: RouterConfig, metrics: RouterMetrics) -> None:
        self._pool = pool
        self._metrics = metrics
        self._tracer = trace.get_tracer("tera.router")
        self.reconfigure(config)

    def reconfigure(self, config: RouterConfig) -> None:
        self._config = config
        self._budget = RetryBudget(config.retry)
        self._default_policy = create_policy(config.policy)
        self._policies = {m: create_policy(p) for m, p in config.model_policies.items()}
        upstream = Upstream(self._choose, self._failed, _remaining, _refusal)
        self._resumer = Resumer(config.resume, self._metrics, upstream)

    def _policy(self, model: str) -> LoadBalancingPolicy:
        return self._policies.get(model, self._default_policy)

    async def stream(
        self, method: str, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        invocation = tuple(context.invocation_metadata() or ())
        headers = dict(invocation)
        route = RouteRequest(headers.get(metadata.MODEL, ""), headers.get(metadata.ROUTING_KEY))
        trace.get_current_span().set_attribute(GEN_AI_REQUEST_MODEL, route.model)
        forward = tuple((k, v) for k, v in invocation if k.startswith(_FORWARDED_PREFIXES))
        self._budget.on_request()
        code = grpc.StatusCode.CANCELLED  # unless the call ends otherwise
        try:
            async for chunk in self._relay(method, request, route, forward, context):
                yield chunk
            code = grpc.StatusCode.OK
        except Refusal as refusal:
            code = refusal.code
            trailing = refusal.trailing
            retry_after = refusal.retry_after_s
            if retry_after is None and code in _TRY_LATER:
                retry_after = self._config.retry_after_s
            if retry_after is not None:
                trailing += ((RETRY_AFTER, str(retry_after)),)
            await context.abort(refusal.code, refusal.message, trailing_metadata=trailing)
        finally:
            self._metrics.requests.labels(route.model, code.name).inc()

    async def _relay(
        self,
        method: str,
        request: bytes,
        route: RouteRequest,
        forward: tuple[tuple[str, str], ...],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[bytes]:
        """The attempts; a stream cut after its first message goes on in a resume."""
        journal = open_journal(method, request, dict(forward), self._config.resume)
        try:
            async for chunk in self._attempts(method, request, route, forward, context, journal):
                yield chunk
        except Cut as cut:
            async for chunk in self._resumer.resume(journal, cut, route, forward, context):
                yield chunk

    async def _attempts(
        self,
        method: str,
        request: bytes,
        route: RouteRequest,
        forward: tuple[tuple[str, str], ...],
        context: grpc.aio.ServicerContext,
        journal: Journal,
    ) -> AsyncIterator[bytes]:
        last_failure: Refusal | None = None
        for attempt in range(1, self._config.retry.max_attempts + 1):
            if attempt > 1:
                if not self._budget.try_spend():
                    log.warning("retry budget exhausted; not retrying %s", route.model)
                    break
                await asyncio.sleep(backoff_s(attempt - 1, self._config.retry))
            replica = self._choose(route, journal.tried, last_failure)
            journal.tried.add(replica.address)
            span = self._tracer.start_span(
                "attempt", attributes={ATTEMPT: attempt, REPLICA: replica.address}
            )
            with trace.use_span(span, end_on_exit=False):  # parent of the upstream call
                call = replica.channel.unary_stream(method)(
                    request, metadata=forward, timeout=_remaining(context)
                )
            with replica.track(), _ends_after(span):
                try:
                    first = await self._first_message(call, replica)
                    if first is None:  # finished with no message: a valid, empty answer
                        replica.record_success()
                        return
                    yield journal.keep(first)
                    async for chunk in self._rest(call, replica):
                        yield journal.keep(chunk)
                    return
                except _AttemptFailed as failure:
                    last_failure = failure.refusal
                    span.set_attribute(RETRY_REASON, failure.refusal.code.name)
                    span.set_status(Status(StatusCode.ERROR, failure.refusal.message))
                    if not failure.retryable or _remaining(context) == 0:
                        break
                    log.info(
                        "attempt %d on %s failed (%s); retrying",
                        attempt,
                        replica.address,
                        failure.refusal.code.name,
                    )
                    self._metrics.retries.labels(failure.refusal.code.name).inc()
                finally:
                    call.cancel()
        raise last_failure or Refusal(grpc.StatusCode.UNAVAILABLE, "no replica answered")

    def _choose(
        self, route: RouteRequest, tried: set[str], last_failure: Refusal | None
    ) -> Replica:
        candidates = [r for r in self._pool.candidates(route.model) if r.address not in tried]
        if not candidates:
            raise last_failure or self._no_candidate(route)
        unsaturated = [r for r in candidates if not r.saturated]
        if not unsaturated:
            raise Refusal(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"all replicas of {route.model} are at capacity",
                retry_after_s=self._config.retry_after_s,
            )
        return self._policy(route.model).select(unsaturated, route)

    def _no_candidate(self, route: RouteRequest) -> Refusal:
        if not self._pool.knows_model(route.model) and any(
            r.serving for r in self._pool.replicas.values()
        ):
            return Refusal(grpc.StatusCode.NOT_FOUND, f"The model '{route.model}' does not exist")
        return Refusal(
            grpc.StatusCode.UNAVAILABLE,
            f"no healthy replica is serving {route.model!r} right now",
            retry_after_s=self._config.retry_after_s,
        )

    async def _first_message(
        self, call: grpc.aio.UnaryStreamCall, replica: Replica
    ) -> bytes | None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._config.retry.first_message_timeout_s):
                message = await call.read()
        except TimeoutError:
            replica.record_failure("no first message in time")
            raise _AttemptFailed(
                Refusal(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"replica {replica.address} sent nothing in time",
                ),
                retryable=True,
            ) from None
        except grpc.aio.AioRpcError as exc:
            raise self._failed(exc, replica) from None
        if message is grpc.aio.EOF:
            return None
        elapsed = time.monotonic() - started
        replica.record_first_message(elapsed)
        self._metrics.first_message.labels(next(iter(replica.models), "")).observe(elapsed)
        return message  # type: ignore[return-value]

    async def _rest(self, call: grpc.aio.UnaryStreamCall, replica: Replica) -> AsyncIterator[bytes]:
        try:
            while (message := await call.read()) is not grpc.aio.EOF:
                yield message  # type: ignore[misc]
        except grpc.aio.AioRpcError as exc:
            # Committed: the caller has tokens already. Never retried from the start.
            raise Cut(self._failed(exc, replica).refusal, replica.address) from None
        replica.record_success()

    @staticmethod
    def _failed(exc: grpc.aio.AioRpcError, replica: Replica) -> _AttemptFailed:
        code = exc.code()
        trailing = tuple((k, v) for k, v in (exc.trailing_metadata() or ()) if isinstance(v, str))
        # A stream handed off by a draining replica is no fault of the replica.
        if code in REPLICA_FAULTS and not any(k == metadata.HANDOFF for k, _ in trailing):
            replica.record_failure(code.name)
        refusal = Refusal(code, exc.details() or code.name, trailing=trailing)
        return _AttemptFailed(refusal, retryable=code in RETRYABLE)


def _refusal(code: grpc.StatusCode, message: str, trailing: tuple) -> Refusal:
    return Refusal(code, message, trailing=trailing)


@contextlib.contextmanager
def _ends_after(span: trace.Span) -> Iterator[None]:
    """Ends an attempt's span; a failure after the first message marks it failed."""
    try:
        yield
    except Refusal as refusal:
        span.set_status(Status(StatusCode.ERROR, refusal.message))
        raise
    except Cut as cut:
        span.set_attribute(RETRY_REASON, cut.refusal.code.name)  # type: ignore[attr-defined]
        span.set_status(Status(StatusCode.ERROR, cut.refusal.message))  # type: ignore[attr-defined]
        raise
    finally:
        span.end()


class _AttemptFailed(Exception):
    def __init__(self, refusal: Refusal, *, retryable: bool) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal
        self.retryable = retryable


def _remaining(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return max(remaining, 0.0)
