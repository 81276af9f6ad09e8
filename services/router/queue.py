"""Queue, don't bounce: when every replica of a model is at capacity, a request waits in
the model's bounded queue and is dispatched, in the order services/router/fairness.py
decides, as soon as an attempt ends and frees a slot (an event, not polling).

A request that would wait longer than its deadline or its class's `max_wait_s`, going by
the queue's drain rate (slots / how long a request holds one), is refused at once with a
Retry-After of that wait; a full queue makes room by shedding the lowest class first.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import grpc
from opentelemetry import trace

from services.common import metadata
from services.common.priority import PRIORITIES, priority_rank
from services.common.telemetry import PRIORITY
from services.router.config import FairConfig
from services.router.fair_share import FairShare, FleetSlots, Holdings
from services.router.fairness import FairScheduler, Ticket
from services.router.pool import ReplicaPool
from services.router.preempt import Slot, victim
from services.router.queue_metrics import QueueMetrics
from services.router.refusal import Refusal
from services.router.share_preempt import ClassLoad, plan
from services.router.wire import usage_of

_HOLD_EWMA = 0.2
_tracer = trace.get_tracer("tera.router")


def shed(message: str, wait_s: float) -> Refusal:
    """The queue's refusal: come back after about `wait_s` (whole seconds, at least 1)."""
    retry_after = max(1, math.ceil(wait_s))
    return Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, message, retry_after_s=retry_after)


@dataclass
class _ModelQueue:
    scheduler: FairScheduler
    waiters: dict[Ticket, asyncio.Future[None]] = field(default_factory=dict)
    pending: int = 0  # dispatched, not yet holding a slot on a replica
    running: set[Slot] = field(default_factory=set)  # streams that may be preempted
    holding: set[Ticket] = field(default_factory=set)  # dispatched, not yet done
    promised: Counter[tuple[int, str]] = field(default_factory=Counter)  # (rank, tenant)
    wake: asyncio.TimerHandle | None = None  # a stream comes of age for fair share
    hold_s: float | None = None  # how long a request holds a slot (EWMA)
    fleet: FleetSlots = field(default_factory=FleetSlots)  # other routers' slots (Redis)

    def holdings(self) -> Holdings:
        return Counter((ticket.rank, ticket.tenant) for ticket in self.holding)


class FairQueue:
    def __init__(
        self,
        pool: ReplicaPool,
        config: FairConfig,
        metrics: QueueMetrics,
        *,
        share: FairShare | None = None,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._share = share
        self._queues: dict[str, _ModelQueue] = {}
        self.reconfigure(config)

    def reconfigure(self, config: FairConfig) -> None:
        self._config = config

    def ticket(self, headers: Mapping[str, str], remaining_s: float | None) -> Ticket | None:
        """The request as the queue sees it, from the caller's metadata; None: no queue."""
        if not self._config.queue_size:
            return None
        now = time.monotonic()
        return Ticket(
            tenant=headers.get(metadata.TENANT, "anonymous"),
            weight=_positive(headers.get(metadata.WEIGHT), 1.0),
            rank=priority_rank(headers.get(metadata.PRIORITY)),
            cost=_positive(headers.get(metadata.COST), self._config.default_cost),
            deadline=None if remaining_s is None else now + remaining_s,
            enqueued=now,
        )

    async def turn(self, model: str, ticket: Ticket | None) -> None:
        """Returns when a replica has a slot for the request; raises a Refusal
        (RESOURCE_EXHAUSTED, Retry-After) if it would wait too long, or was dropped to
        make room for a higher class."""
        if ticket is None:
            return
        q = self._queue(model)
        free = self._free(model, q) - (self._headroom if ticket.rank else 0)
        if not self._pool.candidates(model) or (q.scheduler.size == 0 and free > 0):
            self._start(model, q, ticket)  # the relay answers for a fleet that is missing
            return
        await self._wait(model, q, ticket, self._admit(model, q, ticket))

    async def requeue(self, model: str, ticket: Ticket) -> None:
        """A preempted stream waits for a slot again, ahead of its tenant's other
        requests and never shed: its caller is waiting mid-answer."""
        q = self._queue(model)
        ticket.requeued = True
        q.holding.discard(ticket)
        if ticket.started is not None:  # its whole hold feeds the drain rate, at its end
            ticket.held_s += time.monotonic() - ticket.started
        if not self._pool.candidates(model) or (q.scheduler.size == 0 and self._free(model, q) > 0):
            self._hold(q, ticket)
            return
        await self._wait(model, q, ticket, None, front=True)

    @contextlib.contextmanager
    def preemptable(
        self, model: str, slot: Slot | None, call: grpc.aio.UnaryStreamCall
    ) -> Iterator[None]:
        """While inside, the queue may preempt the stream `call` for a higher class."""
        if slot is None or not self._config.preempt:
            yield
            return
        q = self._queue(model)
        slot.call = call
        q.running.add(slot)
        self._preempt_for_waiters(model, q)
        try:
            yield
        finally:
            q.running.discard(slot)
            slot.call = None

    async def _wait(
        self,
        model: str,
        q: _ModelQueue,
        ticket: Ticket,
        limit: float | None,
        *,
        front: bool = False,
    ) -> None:
        future = asyncio.get_running_loop().create_future()
        q.waiters[ticket] = future
        q.scheduler.push(ticket, front=front)
        self.freed(model)  # a free slot only its class may take (headroom) is taken now
        if not future.done():
            self._preempt_for(model, q, ticket.rank)
        taken = False
        try:
            # Queue time as its own span in the call's trace.
            with _tracer.start_as_current_span(
                "queue", attributes={PRIORITY: PRIORITIES[ticket.rank]}
            ):
                async with asyncio.timeout(limit):
                    await future
            taken = True  # the relay takes the slot before it next awaits
        except TimeoutError:
            self._shed(model, ticket, "deadline")
            raise shed("waited the longest its class or deadline allows", 1) from None
        finally:
            del q.waiters[ticket]
            if future.done() and not future.cancelled() and future.exception() is None:
                q.pending -= 1
            else:
                q.scheduler.discard(ticket)
            self._gauge(model, q)
            if not taken:  # a slot granted to a caller that left goes to the next one
                self.freed(model)
        self._metrics.wait.labels(model, PRIORITIES[ticket.rank]).observe(
            time.monotonic() - ticket.enqueued
        )

    def _preempt_for(self, model: str, q: _ModelQueue, rank: int) -> None:
        """A request of class `rank` has to wait: a stream of a lower class gives up its
        slot to it, or else, within a class, one of a tenant over its fair share."""
        if not self._config.preempt:
            return
        slot = victim(q.running, rank, self._config.max_preemptions)
        if slot is None:
            self._preempt_for_share(model, q)
            return
        self._preempt(model, slot, rank)

    def _preempt(self, model: str, slot: Slot, rank: int) -> None:
        slot.preempt(rank)
        victim_class, by = PRIORITIES[slot.ticket.rank], PRIORITIES[rank]
        self._metrics.preemptions.labels(model, victim_class, by).inc()

    def _preempt_for_share(self, model: str, q: _ModelQueue) -> None:
        """Within each class with waiting requests, streams of tenants over their share
        give their slots to waiting tenants under theirs (share_preempt.py); the slot freed
        is promised to that tenant. A stream too young to yield is looked at again when
        it comes of age (a timer, not polling)."""
        if not (self._config.preempt and self._config.preempt_for_share):
            return
        now, wakes = time.monotonic(), []
        limits = (self._config.max_preemptions, self._config.share_min_run_s, now)
        for rank in sorted({t.rank for t, f in q.waiters.items() if not f.done()}):
            chosen, later = plan(self._class_load(q, rank), q.running, rank, *limits)
            for slot, tenant in chosen:
                q.promised[(rank, tenant)] += 1
                self._preempt(model, slot, rank)
            wakes += [] if later is None else [later]
        if wakes:
            self._wake_at(model, q, _loop_time(min(wakes)))

    def _wake_at(self, model: str, q: _ModelQueue, when: float) -> None:
        if q.wake is not None and q.wake.when() <= when:
            return  # an earlier look comes first
        if q.wake is not None:
            q.wake.cancel()
        q.wake = asyncio.get_running_loop().call_at(when, self._woken, model)

    def _woken(self, model: str) -> None:
        q = self._queues[model]
        q.wake = None
        self._preempt_for_share(model, q)

    def _class_load(self, q: _ModelQueue, rank: int) -> ClassLoad:
        """Slots per tenant of class `rank`: held, plus promised, less those yielding, plus
        those held on the other routers (shares are the fleet's, when counters are shared);
        and its waiting requests with no slot promised."""
        load = ClassLoad(Counter(), Counter(), {})
        for (held_rank, tenant), n in q.fleet.others.items():
            if held_rank == rank:
                load.held[tenant] += n
        for ticket in q.holding:
            if ticket.rank == rank:
                load.held[ticket.tenant] += 1
                load.weights[ticket.tenant] = ticket.weight
        for slot in q.running:
            if slot.preempted_by is not None and slot.ticket.rank == rank:
                load.held[slot.ticket.tenant] -= 1
        for ticket, future in q.waiters.items():
            if ticket.rank == rank and not future.done():
                load.waiting[ticket.tenant] += 1
                load.weights[ticket.tenant] = ticket.weight
        for (promised_rank, tenant), n in q.promised.items():
            if promised_rank == rank:
                load.held[tenant] += n
                load.waiting[tenant] -= n
        return load

    def _preempt_for_waiters(self, model: str, q: _ModelQueue) -> None:
        """A stream became preemptable: requests above the lowest class may be waiting
        with no stream preempted for them (when they came, every stream was still before
        its first message); the highest class's gets one."""
        lengths = q.scheduler.lengths()
        preempting = sum(s.preempted_by is not None for s in q.running)
        if sum(lengths[:-1]) > preempting:
            self._preempt_for(model, q, next(r for r, n in enumerate(lengths) if n))
        elif q.scheduler.size:
            self._preempt_for_share(model, q)

    def busy(self, model: str) -> bool:
        """Whether requests for the model wait or hold promised slots: no time for hedges."""
        q = self._queues.get(model)
        return q is not None and bool(q.scheduler.size or q.pending)

    def freed(self, model: str) -> None:
        """An attempt ended: dispatches queued requests while replicas have free slots."""
        q = self._queues.get(model)
        if q is None:
            return
        if not self._pool.candidates(model):  # none left: on to the relay's 503 at once
            while (ticket := q.scheduler.pop()) is not None:
                q.pending += 1
                q.waiters[ticket].set_result(None)
        while q.scheduler.size and (free := self._free(model, q)) > 0:
            # The last `interactive_headroom` free slots go to interactive requests only.
            lowest_rank = 0 if free <= self._headroom else len(PRIORITIES)
            ticket = self._promised(q) or q.scheduler.pop(lowest_rank=lowest_rank)
            if ticket is None:
                break
            self._hold(q, ticket)
            q.pending += 1
            q.waiters[ticket].set_result(None)
        self._gauge(model, q)

    def _promised(self, q: _ModelQueue) -> Ticket | None:
        """The next ticket of a tenant a slot was taken back for (fair share), if any."""
        for rank, tenant in list(q.promised):
            q.promised[(rank, tenant)] -= 1
            if not q.promised[(rank, tenant)]:
                del q.promised[(rank, tenant)]
            ticket = q.scheduler.pop_for(rank, tenant)
            if ticket is not None:  # else the tenant left: its promise goes with it
                return ticket
        return None

    def _hold(self, q: _ModelQueue, ticket: Ticket) -> None:
        ticket.started = time.monotonic()
        q.holding.add(ticket)

    def done(self, model: str, ticket: Ticket | None, method: str, last: bytes | None) -> None:
        """The call ended: its tenant is charged its actual tokens (the usage in the last
        GenerateResponse), and how long it held a slot feeds the drain rate."""
        q = self._queues.get(model)
        if ticket is None or q is None or ticket.started is None:
            return
        q.holding.discard(ticket)
        held = ticket.held_s + time.monotonic() - ticket.started
        q.hold_s = held if q.hold_s is None else q.hold_s + _HOLD_EWMA * (held - q.hold_s)
        usage = usage_of(method, last)
        if usage is not None:
            q.scheduler.correct(ticket, usage.prompt_tokens + usage.completion_tokens)
        self._metrics.tokens.labels(model, ticket.tenant).inc(ticket.charged)
        self.freed(model)

    def _admit(self, model: str, q: _ModelQueue, ticket: Ticket) -> float:
        """How long `ticket` may wait; raises a Refusal if the queue says it would wait longer,
        or is full of classes at or above its own."""
        limit = self._config.max_wait_for(ticket.rank)
        if ticket.deadline is not None:
            limit = min(limit, ticket.deadline - ticket.enqueued)
        rate = self._drain_rate(model, q)
        if rate:
            wait = (q.scheduler.ahead(ticket) + 1) / rate
            if wait > limit:
                self._shed(model, ticket, "wait")
                raise shed(f"the queue for {model} is about {wait:.1f} s long", wait)
        if q.scheduler.size >= self._config.queue_size:
            evicted = q.scheduler.evict_below(ticket.rank)
            if evicted is None:
                wait = q.scheduler.size / rate if rate else limit
                self._shed(model, ticket, "full")
                raise shed(f"the queue for {model} is full", wait)
            self._shed(model, evicted, "evicted")
            q.waiters[evicted].set_exception(
                shed(f"made room for a higher class in {model}'s queue", limit)
            )
        return max(limit, 0.0)

    def _start(self, model: str, q: _ModelQueue, ticket: Ticket) -> None:
        self._hold(q, ticket)
        q.scheduler.charge(ticket)

    @property
    def _headroom(self) -> int:
        return self._config.interactive_headroom

    def _free(self, model: str, q: _ModelQueue) -> float:
        """Slots free on the model's replicas, less those promised to dispatched requests."""
        free = 0
        for replica in self._pool.candidates(model):
            limit = replica.reported.max_in_flight
            if not limit:
                return math.inf  # no admission limit reported: never full
            free += max(0, limit - replica.in_flight)
        return free - q.pending

    def _drain_rate(self, model: str, q: _ModelQueue) -> float | None:
        """Requests per second the queue empties at, once a request's hold time is known."""
        slots = sum(r.reported.max_in_flight for r in self._pool.candidates(model))
        if not q.hold_s or not slots:
            return None
        return slots / q.hold_s

    def _queue(self, model: str) -> _ModelQueue:
        if model not in self._queues:
            every = self._config.starvation_every
            counters = None if self._share is None else self._share.counters(model)
            scheduler = FairScheduler(starvation_every=every, counters=counters)
            q = self._queues[model] = _ModelQueue(scheduler)
            if self._share is not None:
                q.fleet = self._share.slots(model)
                q.fleet.local = q.holdings
        return self._queues[model]

    def _shed(self, model: str, ticket: Ticket, reason: str) -> None:
        self._metrics.shed.labels(model, PRIORITIES[ticket.rank], reason).inc()

    def _gauge(self, model: str, q: _ModelQueue) -> None:
        for name, length in zip(PRIORITIES, q.scheduler.lengths(), strict=True):
            self._metrics.length.labels(model, name).set(length)


def _loop_time(monotonic: float) -> float:
    """A time.monotonic() instant on the running loop's clock (its own monotonic)."""
    loop = asyncio.get_running_loop()
    return loop.time() + monotonic - time.monotonic()


def _positive(value: str | None, default: float) -> float:
    with contextlib.suppress(TypeError, ValueError):
        number = float(value)  # type: ignore[arg-type]
        if number > 0 and math.isfinite(number):
            return number
    return default
