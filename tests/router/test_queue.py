"""The fair queue with a fake pool: waiting, dispatch on release, shedding, bounds."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from services.common import metadata
from services.router.config import FairConfig
from services.router.preempt import Slot
from services.router.queue import FairQueue
from services.router.queue_metrics import QueueMetrics
from services.router.refusal import Refusal

MODEL = "m"


class FakePool:
    def __init__(self, limit: int) -> None:
        self.replica = SimpleNamespace(reported=SimpleNamespace(max_in_flight=limit), in_flight=0)
        self.up = True

    def candidates(self, model: str) -> list[SimpleNamespace]:
        return [self.replica] if self.up else []


def make(limit: int = 1, **fair: object) -> tuple[FairQueue, FakePool]:
    pool = FakePool(limit)
    config = FairConfig.model_validate({"queue_size": 10, **fair})
    return FairQueue(pool, config, QueueMetrics(CollectorRegistry())), pool  # type: ignore[arg-type]


def headers(tenant: str, cls: str = "standard") -> dict[str, str]:
    return {metadata.TENANT: tenant, metadata.PRIORITY: cls, metadata.COST: "100"}


async def occupy(queue: FairQueue, pool: FakePool, tenant: str, cls: str = "standard") -> None:
    """Waits for a turn, then holds a slot as the relay's attempt would."""
    await queue.turn(MODEL, queue.ticket(headers(tenant, cls), None))
    pool.replica.in_flight += 1


def release(queue: FairQueue, pool: FakePool) -> None:
    pool.replica.in_flight -= 1
    queue.freed(MODEL)


async def test_waits_for_a_slot_and_dispatches_fairly_on_release() -> None:
    queue, pool = make(limit=1)
    await occupy(queue, pool, "noisy")  # the only slot
    order: list[str] = []

    async def one(tenant: str) -> None:
        await occupy(queue, pool, tenant)
        order.append(tenant)

    tasks = [asyncio.create_task(one("noisy")) for _ in range(5)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(one("quiet")))
    await asyncio.sleep(0.01)
    assert order == []  # queued, not refused
    for _ in range(6):
        release(queue, pool)
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order.index("quiet") <= 1  # not behind the 5 noisy ones


async def test_sheds_at_once_with_retry_after_from_the_drain_rate() -> None:
    queue, pool = make(limit=1, max_wait_s={"standard": 1.0})
    queue._queue(MODEL).hold_s = 0.5  # a request holds a slot 0.5 s: 2 per second
    await occupy(queue, pool, "a")
    waiting = [asyncio.create_task(occupy(queue, pool, "a")) for _ in range(3)]
    await asyncio.sleep(0)
    started = time.monotonic()
    with pytest.raises(Refusal) as shed:  # 4th in line at 2/s: about 2 s > 1 s
        await occupy(queue, pool, "a")
    assert time.monotonic() - started < 0.1
    assert shed.value.retry_after_s == 2
    for task in waiting:
        task.cancel()


async def test_a_caller_that_leaves_is_out_of_the_queue_at_once() -> None:
    queue, pool = make(limit=1)
    await occupy(queue, pool, "a")
    waiter = asyncio.create_task(occupy(queue, pool, "b"))
    await asyncio.sleep(0)
    assert queue._queue(MODEL).scheduler.size == 1
    assert queue.busy(MODEL)  # no hedges while requests wait
    waiter.cancel()
    await asyncio.sleep(0)
    assert queue._queue(MODEL).scheduler.size == 0
    assert not queue.busy(MODEL)


async def test_the_queue_is_bounded_and_sheds_the_lowest_class_first() -> None:
    queue, pool = make(limit=1, queue_size=3)
    await occupy(queue, pool, "x")
    batch = [asyncio.create_task(occupy(queue, pool, "b", "batch")) for _ in range(3)]
    await asyncio.sleep(0)
    interactive = asyncio.create_task(occupy(queue, pool, "i", "interactive"))
    await asyncio.sleep(0.01)
    assert queue._queue(MODEL).scheduler.size == 3
    shed = [t for t in batch if t.done()]
    assert len(shed) == 1 and isinstance(shed[0].exception(), Refusal)
    with pytest.raises(Refusal):  # full of classes at or above batch
        await occupy(queue, pool, "b", "batch")
    release(queue, pool)
    await interactive  # the interactive request goes first
    for task in batch:
        task.cancel()


async def test_headroom_keeps_a_slot_for_interactive_requests() -> None:
    queue, pool = make(limit=2, interactive_headroom=1)
    await occupy(queue, pool, "a")
    standard = asyncio.create_task(occupy(queue, pool, "b"))
    await asyncio.sleep(0.01)
    assert not standard.done()  # the last free slot is not for it
    await asyncio.wait_for(occupy(queue, pool, "i", "interactive"), 0.1)
    release(queue, pool)
    release(queue, pool)
    await asyncio.wait_for(standard, 0.1)  # two free: it may take one


async def test_waiters_go_on_at_once_when_the_last_replica_goes() -> None:
    queue, pool = make(limit=1)
    await occupy(queue, pool, "a")
    waiter = asyncio.create_task(occupy(queue, pool, "b"))
    await asyncio.sleep(0)
    pool.up = False  # its attempt failed and the replica is out of rotation
    release(queue, pool)
    await asyncio.wait_for(waiter, 0.1)  # to the relay, which answers 503


@pytest.fixture
def held() -> Iterator[contextlib.ExitStack]:
    """Streams registered as preemptable until the test ends."""
    with contextlib.ExitStack() as stack:
        yield stack


class FakeCall:
    def __init__(self) -> None:
        self.cancelled = False
        self.slot: Slot | None = None

    def cancel(self) -> None:
        self.cancelled = True


async def running(
    held: contextlib.ExitStack, queue: FairQueue, pool: FakePool, tenant: str, cls: str
) -> FakeCall:
    """A stream holding a slot, preemptable (as the relay's) until the test ends."""
    ticket = queue.ticket(headers(tenant, cls), None)
    assert ticket is not None
    await queue.turn(MODEL, ticket)
    pool.replica.in_flight += 1
    call = FakeCall()
    call.slot = Slot(ticket)
    held.enter_context(queue.preemptable(MODEL, call.slot, call))  # type: ignore[arg-type]
    return call


async def test_a_waiting_higher_class_preempts_the_lowest_latest_stream(
    held: contextlib.ExitStack,
) -> None:
    queue, pool = make(limit=3)
    older = await running(held, queue, pool, "b", "batch")
    standard = await running(held, queue, pool, "s", "standard")
    newer = await running(held, queue, pool, "b", "batch")
    waiter = asyncio.create_task(occupy(queue, pool, "i", "interactive"))
    await asyncio.sleep(0)
    assert newer.cancelled and not older.cancelled and not standard.cancelled
    assert queue._metrics.preemptions.labels(MODEL, "batch", "interactive")._value.get() == 1
    release(queue, pool)  # the preempted stream's attempt ends: its slot goes on
    await asyncio.wait_for(waiter, 0.1)
    assert newer.slot is not None
    newer.slot.ticket.started = time.monotonic() - 5.0  # it held its slot 5 s
    requeued = asyncio.create_task(queue.requeue(MODEL, newer.slot.ticket))
    await asyncio.sleep(0.01)
    assert not requeued.done()  # waits for a slot, without a deadline or a shed
    release(queue, pool)
    await asyncio.wait_for(requeued, 0.1)
    queue._queue(MODEL).hold_s = None
    queue.done(MODEL, newer.slot.ticket, "/tera.v1.Engine/Generate", None)
    hold = queue._queue(MODEL).hold_s
    assert hold is not None and 5.0 <= hold < 5.5  # both parts of its hold, not the last


async def test_a_stream_that_becomes_preemptable_yields_to_a_waiting_higher_class(
    held: contextlib.ExitStack,
) -> None:
    """When the interactive request came, the batch stream had sent nothing yet (not
    preemptable); it yields as soon as it has, not at its end."""
    queue, pool = make(limit=1)
    ticket = queue.ticket(headers("b", "batch"), None)
    assert ticket is not None
    await queue.turn(MODEL, ticket)
    pool.replica.in_flight += 1
    waiter = asyncio.create_task(occupy(queue, pool, "i", "interactive"))
    await asyncio.sleep(0)
    call = FakeCall()
    held.enter_context(queue.preemptable(MODEL, Slot(ticket), call))  # type: ignore[arg-type]
    assert call.cancelled
    release(queue, pool)
    await asyncio.wait_for(waiter, 0.1)
    other = FakeCall()  # no one waits now: the next stream is left alone
    held.enter_context(queue.preemptable(MODEL, Slot(ticket), other))  # type: ignore[arg-type]
    assert not other.cancelled


@pytest.mark.parametrize(
    ("fair", "cls"),
    [({"preempt": False}, "batch"), ({"max_preemptions": 0}, "batch"), ({}, "interactive")],
    ids=["off", "preempted-enough", "same-class"],
)
async def test_no_preemption(held: contextlib.ExitStack, fair: dict, cls: str) -> None:
    queue, pool = make(limit=1, **fair)
    held = await running(held, queue, pool, "b", cls)
    waiter = asyncio.create_task(occupy(queue, pool, "i", "interactive"))
    await asyncio.sleep(0.01)
    assert not held.cancelled
    assert not waiter.done()
    waiter.cancel()
