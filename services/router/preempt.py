"""Preempt-and-resume: a queued request of a higher class takes the slot of a running
stream of a lower class, and that stream waits in the queue to be continued.

A stream is preemptable only once it is committed (its first message relayed), while it
is resumable (its journal keeps every message and the replica reports token ids), and
while it has been preempted fewer than `fair.max_preemptions` times, so a batch stream
under a steady interactive load still finishes. The queue (queue.py) picks the victim
and cancels its upstream call, which the engine turns into an abort; the relay sees the
cancellation as `Preempted`, gives the slot back, queues again and continues from the
journal, so the caller sees a pause and no token lost or repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc

from services.router.fairness import Ticket


class Preempted(Exception):
    """The stream's upstream call was cancelled to free its slot for a higher class."""

    def __init__(self, replica: str, by: int) -> None:
        super().__init__(f"preempted on {replica}")
        self.replica = replica
        self.by = by  # the rank of the request that took the slot


@dataclass(eq=False)
class Slot:
    """One call's hold on a replica slot, as the queue may take it back."""

    ticket: Ticket
    call: grpc.aio.UnaryStreamCall | None = None  # set while preemptable
    preempted_by: int | None = None  # rank of the request it yields to
    times: int = field(default=0)  # preemptions so far

    def preempt(self, by: int) -> None:
        """Cancels the upstream call (the engine aborts it); the relay's pending read
        then raises CancelledError, which `check` turns into Preempted."""
        assert self.call is not None
        self.preempted_by = by
        self.times += 1
        self.call.cancel()

    def pin(self) -> None:
        """No longer preemptable: it could not be continued (past the journal's cap)."""
        self.call = None

    def check(self, replica: str) -> None:
        """Called on a CancelledError from the upstream read: raises Preempted when the
        queue cancelled the call; returns when the caller itself left (re-raise)."""
        task = asyncio.current_task()
        if self.preempted_by is None or (task is not None and task.cancelling()):
            return
        by, self.preempted_by = self.preempted_by, None
        raise Preempted(replica, by)


@contextlib.contextmanager
def yielding(slot: Slot | None, replica: str) -> Iterator[None]:
    """Around a stream's upstream reads: the CancelledError of a call the queue cancelled
    comes out as Preempted; the caller's own cancellation goes on as it is."""
    try:
        yield
    except asyncio.CancelledError:
        if slot is not None:
            slot.check(replica)
        raise


def victim(running: set[Slot], rank: int, max_times: int) -> Slot | None:
    """The stream to preempt for a request of class `rank`: of the preemptable streams of
    a lower class, the lowest class, and within it the one dispatched last (it has the
    least done, so the least to replay as prompt)."""
    candidates = [s for s in running if preemptable(s, max_times) and s.ticket.rank > rank]
    if not candidates:
        return None
    return max(candidates, key=lambda s: (s.ticket.rank, s.ticket.started or 0.0))


def preemptable(slot: Slot, max_times: int) -> bool:
    """Committed, continuable, not yielding already, and under `max_preemptions`."""
    return slot.call is not None and slot.preempted_by is None and slot.times < max_times
