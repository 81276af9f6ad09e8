"""Token-exact resume of a committed stream on another replica.

On the happy path the relay only keeps the response messages it passes on, as bytes, up
to a cap (a Journal). When a replica cuts a stream after its first message (it died, the
connection dropped, it handed the stream off at the end of its drain), the kept
messages are decoded once into a continuation of the original request: per choice, the
token ids the caller has and whether the choice had finished. Another healthy replica
of the model (same policy, every replica tried so far excluded) continues from there and
its messages are relayed on, so the caller sees one uninterrupted stream. The engine
does the exact part (max_tokens, stop strings, UTF-8, parsers, usage); the router only
says where the caller is.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass

import grpc
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from services.common import metadata
from services.common.mux import GENERATE
from services.common.telemetry import ATTEMPT, REPLICA, RESUMED_TOKENS, RETRY_REASON
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.router.attempt import AttemptFailed
from services.router.config import ResumeConfig
from services.router.metrics import RouterMetrics
from services.router.policies import RouteRequest
from services.router.preempt import Slot, yielding
from services.router.refusal import Refusal, caller_deadline, remaining
from services.router.replica import Replica
from services.router.retry import RETRYABLE

# A cut by one of these is the replica's failure, so another replica may continue.
RESUMABLE = RETRYABLE | {grpc.StatusCode.CANCELLED}


@dataclass
class Cut(Exception):
    """A committed stream failed; `refusal` is what the caller gets if it is not resumed."""

    refusal: Refusal
    replica: str  # the address that cut it


class Journal:
    """The messages relayed so far on one stream, kept as bytes while under the cap."""

    def __init__(self, request: bytes, cap: int) -> None:
        self.request = request
        self._cap = cap
        self._size = 0
        self._chunks: list[bytes] | None = [] if cap > 0 else None
        self.resumes = 0
        self.tried: set[str] = set()  # replica addresses, by every attempt of the call

    @property
    def resumable(self) -> bool:
        return self._chunks is not None

    def keep(self, chunk: bytes, slot: Slot | None = None) -> bytes:
        """Keeps `chunk` while under the cap; past it, `slot` is pinned (before the next
        await: a cut now could not be continued)."""
        if self._chunks is not None:
            self._size += len(chunk)
            if self._size > self._cap:
                self._chunks = None  # too long to keep: fails as an unresumable stream
            else:
                self._chunks.append(chunk)
        if slot is not None and self._chunks is None:
            slot.pin()
        return chunk

    @property
    def continuable(self) -> bool:
        """Whether a continuation can be built now: every message is kept and the first
        carries its token ids (a replica that does not report them cannot be resumed)."""
        if not self._chunks:
            return False
        first = pb.GenerateResponse.FromString(self._chunks[0])
        return all(d.num_tokens == len(d.token_ids) for d in first.choices)

    def continuation(self) -> tuple[bytes, int] | None:
        """The request to continue with and the tokens it carries; None if the caller
        already has the whole answer (the cut came after the last message)."""
        assert self._chunks is not None
        request = pb.GenerateRequest.FromString(self.request)
        progress = {p.index: p for p in request.continuation.choices}  # a router's resume
        complete = False
        for chunk in self._chunks:
            response = pb.GenerateResponse.FromString(chunk)
            complete = complete or response.HasField("usage")
            for delta in response.choices:
                if delta.num_tokens != len(delta.token_ids):
                    raise ValueError("the replica does not report token ids")
                p = progress.setdefault(delta.index, pb.ChoiceProgress(index=delta.index))
                p.token_ids.extend(delta.token_ids)
                p.finish_reason = delta.finish_reason or p.finish_reason
        if complete:
            return None
        del request.continuation.choices[:]
        request.continuation.choices.extend(progress[i] for i in sorted(progress))
        return request.SerializeToString(), sum(len(p.token_ids) for p in progress.values())


def open_journal(method: str, request: bytes, headers: dict[str, str], config: ResumeConfig):
    """A journal for this call; an inert one when it is not resumable (not Generate, no
    resumes configured, or opted out with metadata tera-resume: off)."""
    off = (
        method != GENERATE
        or config.max_resumes == 0
        or headers.get(metadata.RESUME, "").lower() == "off"
    )
    return Journal(request, 0 if off else config.max_kept_bytes)


@dataclass
class ResumeHooks:
    """What the resumer borrows from the relay: replica choice, failure accounting, and
    the queue's hold on the stream's slot (a resumed stream stays preemptable)."""

    choose: Callable[[RouteRequest, set[str], Refusal | None], Replica]
    failed: Callable[[grpc.aio.AioRpcError, Replica, float], AttemptFailed]
    preemptable: Callable[
        [str, Slot | None, grpc.aio.UnaryStreamCall], AbstractContextManager[None]
    ]
    # A call's first read, given up past first_message_timeout_s (TimeoutError) only
    # when elsewhere() says another replica could take the stream (relay.py).
    first_read: Callable[
        [grpc.aio.UnaryStreamCall, trace.Span, str, Callable[[], bool]], Awaitable[object]
    ]
    # Whether an untried replica of the model has room.
    room_elsewhere: Callable[[str, set[str]], bool]
    # Takes a token from the retry budget if one is left (RetryBudget.try_spend).
    spend_retry: Callable[[], bool]


class Resumer:
    def __init__(self, config: ResumeConfig, metrics: RouterMetrics, hooks: ResumeHooks) -> None:
        self._config = config
        self._metrics = metrics
        self._up = hooks
        self._tracer = trace.get_tracer("tera.router")

    async def resume(
        self,
        journal: Journal,
        cut: Cut,
        route: RouteRequest,
        forward: tuple[tuple[str, str], ...],
        context: grpc.aio.ServicerContext,
        slot: Slot | None,
    ) -> AsyncIterator[bytes]:
        """Continues the stream on other replicas until it ends, or ends it with the
        cut's error when it cannot be continued; raises Preempted if the queue takes its
        slot (`slot`: None when the call is not queued)."""
        failure, cut_at, cutter = cut.refusal, time.monotonic(), cut.replica
        while True:
            if _reason(failure) == "drain":
                # Handed off, not failed: it is out of rotation while it drains, and may
                # be back (restarted) for a later resume.
                journal.tried.discard(cutter)
            request, tokens = self._next_request(journal, failure, context)
            if request is None:
                return  # the caller had everything but the end of the call
            replica = self._replica(route, journal, failure)
            self._metrics.resumes.labels(_reason(failure)).inc()
            span = self._tracer.start_span(
                "attempt",
                attributes={
                    ATTEMPT: len(journal.tried),
                    REPLICA: replica.address,
                    RESUMED_TOKENS: tokens,
                },
            )
            with trace.use_span(span, end_on_exit=False):
                call = replica.unary_stream(GENERATE)(
                    request, metadata=forward, timeout=remaining(context)
                )
            held = slot if journal.continuable else None
            with (
                replica.track() as started,
                ExitStack() as prefill,
                self._up.preemptable(route.model, held, call),
                yielding(held, replica.address),
            ):
                # Until it answers, the continuation (the prompt and what was sent) is
                # this replica's queued prefill, as a first attempt's prompt is.
                uncached = replica.uncached_tokens(route.prefix_hashes) + tokens
                prefill.enter_context(replica.prefilling(uncached))
                answered = False  # a cut before this call's first message: one gap

                def elsewhere() -> bool:
                    # Moving a silent continuation repeats its prefill on another
                    # replica while this one may still be working through it: a retry,
                    # paid as a first attempt's is, so an overloaded fleet (where
                    # silence is likeliest and the budget lowest) is not churned. A
                    # cut's resume is not: the cut replica's work is lost either way.
                    resumes_left = journal.resumes < self._config.max_resumes
                    return (
                        resumes_left
                        and self._up.room_elsewhere(route.model, journal.tried)
                        and self._up.spend_retry()
                    )

                try:
                    with keeping_alive(context, self._config.keepalive_s):
                        # The continuation's prefill: bounded as a first attempt's is.
                        message = await self._up.first_read(call, span, route.model, elsewhere)
                    if message is not grpc.aio.EOF:
                        prefill.close()
                        self._metrics.resume_gap.observe(time.monotonic() - cut_at)
                        answered = True
                    while message is not grpc.aio.EOF:
                        yield journal.keep(message, held)  # type: ignore[arg-type]
                        message = await call.read()
                    replica.record_success()
                    return
                except (grpc.aio.AioRpcError, TimeoutError) as exc:
                    failure = self._failure(exc, replica, started)
                    cut_at = time.monotonic() if answered else cut_at
                    cutter = replica.address
                    span.set_attribute(RETRY_REASON, failure.code.name)
                    span.set_status(Status(StatusCode.ERROR, failure.message))
                finally:
                    call.cancel()
                    span.end()

    def _failure(
        self, exc: grpc.aio.AioRpcError | TimeoutError, replica: Replica, started: float
    ) -> Refusal:
        if isinstance(exc, TimeoutError):  # silent past the limit, and another has room
            replica.record_failure("no first message in time", started=started)
            return Refusal(
                grpc.StatusCode.UNAVAILABLE, f"replica {replica.address} sent nothing in time"
            )
        return self._up.failed(exc, replica, started).refusal

    def _replica(self, route: RouteRequest, journal: Journal, failure: Refusal) -> Replica:
        try:
            replica = self._up.choose(route, journal.tried, failure)
        except Exception as exc:
            if exc is not failure:
                raise
            why = "no other healthy replica of the model"
            raise _not_resumed(failure, why) from None
        journal.tried.add(replica.address)
        journal.resumes += 1
        return replica

    def _next_request(
        self, journal: Journal, failure: Refusal, context: grpc.aio.ServicerContext
    ) -> tuple[bytes | None, int]:
        """The continuation to send, or raises the failure when the stream must end."""
        why = None
        if failure.code not in RESUMABLE:
            why = f"{failure.code.name} is not a replica failure"
        elif not journal.resumable:
            why = "the stream is not resumable (opted out, or past the kept-bytes cap)"
        elif journal.resumes >= self._config.max_resumes:
            why = f"resumed {journal.resumes} times already"
        elif remaining(context) == 0 or caller_deadline(failure.code, context):
            why = "the call's deadline has passed"
        if why is None:
            try:
                continuation = journal.continuation()
            except ValueError as exc:
                why = str(exc)
            else:
                return continuation or (None, 0)
        if journal.resumes == 0 and failure.code not in RESUMABLE:
            raise failure
        raise _not_resumed(failure, why)


@contextlib.contextmanager
def keeping_alive(context: grpc.aio.ServicerContext, period_s: float) -> Iterator[None]:
    """While the body waits on the caller's behalf, a keepalive to the caller every
    `period_s`, where it takes them (a MuxContext's, services/common/mux_server.py); a
    plain gRPC call has none, and its caller's own deadline bounds the wait."""
    send = getattr(context, "keepalive", None)
    if send is None:
        yield
        return

    async def beat() -> None:
        while True:
            await asyncio.sleep(period_s)
            send()

    beating = asyncio.create_task(beat())
    try:
        yield
    finally:
        beating.cancel()


def _not_resumed(failure: Refusal, why: str) -> Refusal:
    return Refusal(
        failure.code, f"{failure.message} (not resumed: {why})", trailing=failure.trailing
    )


def _reason(failure: Refusal) -> str:
    if any(key == metadata.HANDOFF for key, _ in failure.trailing):
        return "drain"
    return failure.code.name.lower()
