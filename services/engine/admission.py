"""Bounded admission and drain: the engine refuses work it cannot hold, after a brief
wait for a slot that is being released."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import grpc

from services.common.arrivals import ArrivalRate
from services.engine.errors import EngineError

# A call that finds every slot taken waits this long for one to free before it is
# refused. A router counts a slot free the moment it cancels a call (a preempted stream,
# a caller that left) and may send the next call at once; the cancellation reaches this
# engine's handler for the old call a little later, sometimes after the new call: on a
# loaded 2-core machine 0.25 s was too short about once in 600 preemptions (CI saw it).
RELEASE_WAIT_S = 1.0


class InFlightLimit:
    """At most max_in_flight calls at once, none while draining; drain() waits for idle."""

    def __init__(self, max_in_flight: int, *, release_wait_s: float = RELEASE_WAIT_S) -> None:
        self.max_in_flight = max_in_flight
        self.release_wait_s = release_wait_s
        self.in_flight = 0
        self.admitted_total = 0
        self._arrivals = ArrivalRate()
        self.draining = False
        self.handed_off = False
        self._streams: set[asyncio.Task[object]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._released = asyncio.Event()  # set, and replaced, at each release

    def arrivals_per_s(self) -> float:
        """Calls admitted per second recently, as of now."""
        self._arrivals.observe(self.admitted_total)
        return self._arrivals.per_s

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        await self._slot()
        self.in_flight += 1
        self.admitted_total += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()
            self._released.set()
            self._released = asyncio.Event()

    async def _slot(self) -> None:
        """Returns when a slot is free, waiting up to release_wait_s for one; raises
        RESOURCE_EXHAUSTED if none frees, UNAVAILABLE while draining."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.release_wait_s
        while not self.draining and self.in_flight >= self.max_in_flight:
            left = deadline - loop.time()
            if left <= 0:
                raise EngineError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the engine is at its limit of {self.max_in_flight} concurrent requests",
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), left)
        if self.draining:
            raise EngineError(grpc.StatusCode.UNAVAILABLE, "the engine is draining")

    async def drain(self, grace_s: float) -> bool:
        """Stops admitting; True if every in-flight call finished within the grace period."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
        except TimeoutError:
            return False
        return True

    @contextlib.contextmanager
    def handed_off_at_grace(self) -> Iterator[None]:
        """The calling task (one stream) is cancelled if it outlives the drain's grace."""
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        try:
            yield
        finally:
            self._streams.discard(task)

    def hand_off(self) -> int:
        """Ends the streams still running (the servicer answers them with a status the
        router resumes elsewhere); returns how many."""
        self.handed_off = True
        for task in self._streams:
            task.cancel()
        return len(self._streams)
