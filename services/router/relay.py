"""Relays a server-streaming call to one replica, as opaque bytes, with retries.

Until the first response message reaches the caller, a failed attempt is retried on
another replica (jittered backoff, attempt cap, retry budget), and an attempt slow to send
it is hedged on a second replica (hedge.py). After that the answer is committed: a cut
Generate stream is continued token-exactly on another replica (resume.py); one that
cannot be ends the caller's stream with the replica's error status, so a truncated answer
can never pass for a complete one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator

import grpc
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from services.common import metadata
from services.common.mux import GENERATE
from services.common.mux_client import Forward, MuxCall
from services.common.priority import PRIORITIES
from services.common.telemetry import (
    ATTEMPT,
    GEN_AI_REQUEST_MODEL,
    HEDGE,
    REPLICA,
    RESUMED_TOKENS,
    RETRY_REASON,
    tracing_enabled,
)
from services.router.attempt import Attempt, AttemptFailed, Upstream
from services.router.config import RouterConfig
from services.router.fair_share import FairShare
from services.router.hedge import Hedger, first_answer
from services.router.metrics import RouterMetrics
from services.router.policies import LoadBalancingPolicy, RouteRequest, create_policy
from services.router.pool import ReplicaPool
from services.router.preempt import Preempted, Slot, yielding
from services.router.queue import FairQueue
from services.router.queue_metrics import QueueMetrics
from services.router.refusal import Refusal, caller_deadline, no_model, remaining
from services.router.replica import Replica
from services.router.resume import (
    Cut,
    Journal,
    ResumeHooks,
    Resumer,
    keeping_alive,
    open_journal,
)
from services.router.retry import REPLICA_FAULTS, RETRYABLE, RetryBudget, backoff_s
from services.router.wire import model_of, usage_of

log = logging.getLogger("tera.router.relay")

# Caller metadata passed on to the engine. Trace context is re-injected by the gRPC
# instrumentation when the router traces; otherwise it is passed through untouched.
_FORWARDED_PREFIXES = ("tera-",) + (
    () if tracing_enabled() else ("traceparent", "tracestate", "baggage")
)


class Relay:
    def __init__(self, pool: ReplicaPool, config: RouterConfig, metrics: RouterMetrics) -> None:
        self._pool = pool
        self._metrics = metrics
        self._tracer = trace.get_tracer("tera.router")
        queue_metrics = QueueMetrics(metrics.registry)
        self._share = _fair_share(config, queue_metrics)
        self._queue = FairQueue(pool, config.fair, queue_metrics, share=self._share)
        self.reconfigure(config)
        metrics.retry_budget.set_function(lambda: self._budget.tokens)

    async def close(self) -> None:
        if self._share is not None:
            await self._share.close()

    def reconfigure(self, config: RouterConfig) -> None:
        self._config = config
        self._budget = RetryBudget(config.retry)
        self._hedger = Hedger(config, self._metrics)
        self._default_policy = create_policy(config.policy, config.policy_options)
        self._policies = {
            m: create_policy(p, config.policy_options) for m, p in config.model_policies.items()
        }
        hooks = ResumeHooks(
            self._choose,
            self._failed,
            self._queue.preemptable,
            self._first_read,
            self._room_elsewhere,
            self._budget.try_spend,
        )
        self._resumer = Resumer(config.resume, self._metrics, hooks)
        self._queue.reconfigure(config.fair)

    def policies(self) -> list[LoadBalancingPolicy]:
        return [self._default_policy, *self._policies.values()]

    def _policy(self, model: str) -> LoadBalancingPolicy:
        return self._policies.get(model, self._default_policy)

    async def stream(
        self, method: str, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        invocation = tuple(context.invocation_metadata() or ())
        headers = dict(invocation)
        # Without the metadata, the request's own model field (read from the wire bytes).
        model = headers.get(metadata.MODEL) or model_of(request)
        route = RouteRequest.from_metadata(model, headers)
        trace.get_current_span().set_attribute(GEN_AI_REQUEST_MODEL, route.model)
        forward = tuple((k, v) for k, v in invocation if k.startswith(_FORWARDED_PREFIXES))
        self._budget.on_request()
        code = grpc.StatusCode.CANCELLED  # unless the call ends otherwise
        ticket, last = self._queue.ticket(headers, remaining(context)), None
        try:
            if not route.model:
                raise no_model()
            await self._queue.turn(route.model, ticket)  # while every replica is full
            slot = None if ticket is None else Slot(ticket)
            upstream = Upstream(method, request, route, forward, context, slot)
            async for chunk in self._relay(upstream):
                yield (last := chunk)
            code = grpc.StatusCode.OK
        except Refusal as refusal:
            code = refusal.code
            trailing = refusal.trailing_metadata(self._config.retry_after_s)
            await context.abort(refusal.code, refusal.message, trailing_metadata=trailing)
        finally:
            self._queue.done(route.model, ticket, method, last)
            self._metrics.requests.labels(route.model, code.name).inc()

    async def _relay(self, up: Upstream) -> AsyncIterator[bytes]:
        """The attempts; a stream cut after its first message goes on in a resume, and
        one preempted for a higher class goes on when the queue gives it a slot again."""
        journal = open_journal(up.method, up.request, dict(up.forward), self._config.resume)
        cut: Cut | None = None
        while True:
            try:
                if cut is None:
                    stream = self._attempts(up, journal)
                else:  # a resumed stream may be preempted too: on to the queue again
                    args = (up.route, up.forward, up.context, up.slot)
                    stream = self._resumer.resume(journal, cut, *args)
                async for chunk in stream:
                    yield chunk
                return
            except Cut as cutting:
                cut = cutting
            except Preempted as preempted:
                cut = None
                request = await self._after_preemption(up, journal, preempted)
                if request is None:
                    return  # the caller had the whole answer already
                up = dataclasses.replace(up, request=request, continued=True)

    async def _after_preemption(
        self, up: Upstream, journal: Journal, preempted: Preempted
    ) -> bytes | None:
        """Queues the preempted stream again; returns its continuation (the journal's:
        prompt + the tokens the caller has) once it has a slot, None if it needs none."""
        assert up.slot is not None  # only a queued call is preemptable
        journal.tried.discard(preempted.replica)  # healthy: it only gave its slot away
        continuation = journal.continuation()
        if continuation is None:
            return None
        request, tokens = continuation
        self._metrics.resumes.labels("preempt").inc()
        trace.get_current_span().add_event(
            "preempted",
            {
                REPLICA: preempted.replica,
                RESUMED_TOKENS: tokens,
                "tera.by": PRIORITIES[preempted.by],
            },
        )
        with keeping_alive(up.context, self._config.resume.keepalive_s):
            await self._queue.requeue(up.route.model, up.slot.ticket)
        return request

    async def _attempts(self, up: Upstream, journal: Journal) -> AsyncIterator[bytes]:
        route, tried = up.route, journal.tried
        last_failure: Refusal | None = None
        prepaid = 0  # retries paid for as their attempts were given up (_open's elsewhere)
        try:
            for attempt in range(1, self._config.retry.max_attempts + 1):
                if attempt > 1:
                    if prepaid:
                        prepaid -= 1
                    elif not self._budget.try_spend():
                        log.warning("retry budget exhausted; not retrying %s", route.model)
                        self._metrics.retry_budget_exhausted.labels(route.model).inc()
                        break
                    self._metrics.retries.labels(last_failure.code.name).inc()  # type: ignore[union-attr]
                    await asyncio.sleep(backoff_s(attempt - 1, self._config.retry))
                replica = self._choose(route, tried, last_failure)
                if attempt == 1:  # a model some replica serves: worth hedging state
                    self._hedger.on_request(route.model)
                opened: list[Attempt] = []
                try:
                    winner, first = await self._race(up, replica, attempt, opened, tried)
                    # Given up for a retry before a hedge answered after all: none is made.
                    self._budget.refund(_retries_paid(opened))
                    # A hedge's loser was cancelled, not failed: a later resume may use it.
                    tried.difference_update(a.replica.address for a in opened if a is not winner)
                    with _marks_failure(winner.span):
                        if first is None:  # finished with no message: a valid, empty answer
                            winner.replica.record_success()
                            return
                        async for chunk in self._committed(up, winner, first, journal):
                            yield chunk
                        return
                except AttemptFailed as failure:  # the race's: the stream had no message
                    prepaid += _retries_paid(opened)
                    last_failure = failure.refusal
                    if not failure.retryable or remaining(up.context) == 0:
                        break
                    log.info(
                        "attempt %d on %s failed (%s)",
                        attempt,
                        ", ".join(a.replica.address for a in opened),
                        failure.refusal.code.name,
                    )
                finally:
                    for opened_attempt in opened:
                        opened_attempt.close()
                    self._queue.freed(route.model)  # their slots go to the queue's next
        finally:
            self._budget.refund(prepaid)  # paid for, not made (no replica left, no time)
        raise last_failure or Refusal(grpc.StatusCode.UNAVAILABLE, "no replica answered")

    async def _race(
        self, up: Upstream, replica: Replica, attempt: int, opened: list[Attempt], tried: set[str]
    ) -> tuple[Attempt, bytes | None]:
        """The attempt on `replica`, hedged: the first of the attempts opened to answer."""
        primary = self._open(up, replica, attempt, opened, tried)
        hedge = functools.partial(self._hedge, up, attempt, opened, tried)
        winner, first = await first_answer(primary, self._hedger.delay_s(up.route.model), hedge)
        self._hedger.settle(up.route.model, winner, opened)
        return winner, first

    def _open(
        self, up: Upstream, replica: Replica, attempt: int, opened: list[Attempt], tried: set[str]
    ) -> Attempt:
        """Starts the call on `replica`; its first message is awaited in a task."""
        tried.add(replica.address)
        hedge = bool(opened)
        span = self._tracer.start_span(
            "attempt", attributes={ATTEMPT: attempt, REPLICA: replica.address, HEDGE: hedge}
        )
        with trace.use_span(span, end_on_exit=False):  # parent of the upstream call
            call = replica.unary_stream(up.method)(
                up.request, metadata=up.forward, timeout=remaining(up.context)
            )
        opened.append(opening := Attempt(replica, call, span, hedge))
        retries_left = attempt < self._config.retry.max_attempts

        def elsewhere() -> bool:
            # The retry's budget token is taken as the attempt is given up for it: only
            # asked here and spent at the retry, every attempt of a burst overdue at once
            # would be given up for the one token left, and all but one call fail.
            opening.retry_paid = (
                retries_left
                and self._room_elsewhere(up.route.model, tried)
                and self._budget.try_spend()
            )
            return opening.retry_paid

        first = self._first_message(opening, up, elsewhere)
        # Sets .started before the task runs.
        opening.wait_first(
            asyncio.create_task(first), replica.uncached_tokens(up.route.prefix_hashes)
        )
        return opening

    def _hedge(
        self, up: Upstream, attempt: int, opened: list[Attempt], tried: set[str]
    ) -> Attempt | None:
        """A second attempt on another replica, if one can take it and the budget allows."""
        candidates = [
            r
            for r in self._pool.candidates(up.route.model)
            if r.address not in tried and not r.saturated
        ]
        if not candidates or self._queue.busy(up.route.model):
            return None  # a hedge would take a slot a queued request is waiting for
        if not self._hedger.try_spend(up.route.model):
            return None
        # The least loaded, not the policy's pick: a hedge must not shift its rotation.
        replica = min(candidates, key=Replica.load_score)
        log.debug("hedging %s on %s", up.route.model, replica.address)
        return self._open(up, replica, attempt, opened, tried)

    def _choose(
        self, route: RouteRequest, tried: set[str], last_failure: Refusal | None
    ) -> Replica:
        candidates = self._untried(route.model, tried)
        if not candidates and last_failure is not None:
            # A call cut loose by a failed replica may pass a half-open breaker's one-trial
            # gate: the replica left may be half-open for as long as it gets no call (back
            # from a restart while cache_aware sent a prompt's calls to the holder of its
            # prefix), and its trial would turn away all but one of the dead one's calls.
            candidates = self._untried(route.model, tried, past_trials=True)
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

    def _room_elsewhere(self, model: str, tried: set[str]) -> bool:
        return any(not r.saturated for r in self._untried(model, tried))

    def _untried(self, model: str, tried: set[str], *, past_trials: bool = False) -> list[Replica]:
        candidates = self._pool.candidates(model, past_trials=past_trials)
        return [r for r in candidates if r.address not in tried]

    def _no_candidate(self, route: RouteRequest) -> Refusal:
        # 404 only for a name no replica has ever given; a known model with no ready
        # replica (loading, restarting, draining, scaled to zero) is worth retrying.
        if not self._pool.knows_model(route.model) and self._pool.knows_any():
            return Refusal(grpc.StatusCode.NOT_FOUND, f"The model '{route.model}' does not exist")
        return Refusal(
            grpc.StatusCode.UNAVAILABLE,
            f"The model '{route.model}' is loading or temporarily unavailable "
            "(no ready replica); retry later",
            retry_after_s=self._config.retry_after_s,
        )

    async def _first_message(
        self, attempt: Attempt, up: Upstream, elsewhere: Callable[[], bool]
    ) -> bytes | None:
        replica, started = attempt.replica, time.monotonic()
        model, context = up.route.model, up.context
        keepalive_s = self._config.resume.keepalive_s
        waiting = keeping_alive(context, keepalive_s) if up.continued else contextlib.nullcontext()
        try:
            with waiting:
                message = await self._first_read(attempt.call, attempt.span, model, elsewhere)
        except TimeoutError:
            replica.record_failure("no first message in time", started=attempt.started)
            raise AttemptFailed(
                Refusal(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"replica {replica.address} sent nothing in time",
                ),
                retryable=True,
            ) from None
        except grpc.aio.AioRpcError as exc:
            failed = self._failed(exc, replica, attempt.started)
            failed.retryable &= not caller_deadline(exc.code(), context)
            raise failed from None
        if message is grpc.aio.EOF:
            return None
        attempt.span.add_event("first_message")  # the first-token waterfall's router mark
        attempt.answered()
        elapsed = time.monotonic() - started
        replica.record_first_message(elapsed)
        self._hedger.observe(model, elapsed)
        self._metrics.first_message.labels(next(iter(replica.models), "")).observe(elapsed)
        return message  # type: ignore[return-value]

    async def _first_read(
        self,
        call: grpc.aio.UnaryStreamCall,
        span: trace.Span,
        model: str,
        elsewhere: Callable[[], bool],
    ) -> object:
        """The attempt's first read. Past first_message_timeout_s it is abandoned
        (TimeoutError) only for a retry on another replica: with none to go to (no untried
        replica with room, no attempt or retry budget left), abandoning would fail a call
        its replica may still be working through (a long prefill on a slow host, a deep
        queue), so it waits on, bounded by the caller's deadline, and looks again every
        period."""
        read = asyncio.ensure_future(call.read())
        try:
            limit, waited = self._config.first_message_timeout_s(model), 0.0
            while not (await asyncio.wait((read,), timeout=limit))[0]:
                if elsewhere():
                    raise TimeoutError
                if not waited:
                    self._metrics.first_message_overdue.labels(model).inc()
                waited += limit
                span.add_event("first_message_overdue", {"tera.waited_s": waited})
            return read.result()
        finally:
            read.cancel()

    async def _committed(
        self, up: Upstream, winner: Attempt, first: bytes, journal: Journal
    ) -> AsyncIterator[bytes]:
        """The answer from its first message on; preemptable while it can be continued.
        Reads the call itself, not through a generator of its own: one layer fewer to
        resume for every relayed token."""
        yield journal.keep(last := first)
        slot = up.slot if journal.continuable else None
        replica = winner.replica
        direct = _forwarded(up, winner.call, journal, slot)
        with self._queue.preemptable(up.route.model, slot, winner.call):
            try:
                with yielding(slot, replica.address):
                    while (message := await winner.call.read(*direct)) is not grpc.aio.EOF:
                        yield journal.keep(last := message, slot)  # type: ignore[arg-type]
            except grpc.aio.AioRpcError as exc:
                # Committed: the caller has tokens already. Never retried from the start.
                failure = self._failed(exc, replica, winner.started)
                raise Cut(failure.refusal, replica.address) from None
            replica.record_success()
        self._metrics.count_prompt(winner.replica.address, usage_of(up.method, last))

    @staticmethod
    def _failed(exc: grpc.aio.AioRpcError, replica: Replica, started: float) -> AttemptFailed:
        code = exc.code()
        trailing = tuple((k, v) for k, v in (exc.trailing_metadata() or ()) if isinstance(v, str))
        # A stream handed off by a draining replica is no fault of the replica.
        if code in REPLICA_FAULTS and not any(k == metadata.HANDOFF for k, _ in trailing):
            replica.record_failure(code.name, started=started)
        refusal = Refusal(code, exc.details() or code.name, trailing=trailing)
        return AttemptFailed(refusal, retryable=code in RETRYABLE)


def _forwarded(
    up: Upstream, call: grpc.aio.UnaryStreamCall | MuxCall, journal: Journal, slot: Slot | None
) -> tuple[Forward, ...]:
    """Between two multiplexed calls (both transports mux, the default), the messages
    that carry no usage go from the replica's link straight to the caller's outbox,
    journaled, rather than through this stream's task and the generators above it: one
    task wake-up less a relayed token. What those layers read of the stream is its first
    message and the last, with the usage (their `last`), and both still pass through."""
    send_now = getattr(up.context, "send_now", None)  # a MuxContext's, or a Vouched one's
    if send_now is None or not isinstance(call, MuxCall) or up.method != GENERATE:
        return ()

    def forward(message: bytes) -> bool:
        if usage_of(up.method, message) is not None:
            return False
        send_now(journal.keep(message, slot))
        return True

    return (forward,)


def _retries_paid(opened: list[Attempt]) -> int:
    """Retries the race's attempts paid for as they were given up (Relay._open)."""
    return sum(a.retry_paid for a in opened)


@contextlib.contextmanager
def _marks_failure(span: trace.Span) -> Iterator[None]:
    """A failure after the first message marks the attempt's span failed."""
    try:
        yield
    except Refusal as refusal:
        span.set_status(Status(StatusCode.ERROR, refusal.message))
        raise
    except Cut as cut:
        span.set_attribute(RETRY_REASON, cut.refusal.code.name)
        span.set_status(Status(StatusCode.ERROR, cut.refusal.message))
        raise
    except Preempted as preempted:  # no failure: it gave its slot to a higher class
        span.add_event("preempted", {"tera.by": PRIORITIES[preempted.by]})
        raise


def _fair_share(config: RouterConfig, metrics: QueueMetrics) -> FairShare | None:
    """The fleet's counters for the fair queue, synced from now on; None: this router's
    own. Set at start: a reload does not turn sharing on or off."""
    if config.redis is None or not config.fair.queue_size:
        return None
    share = FairShare(config.redis, config.fair, metrics)
    share.start()
    return share
