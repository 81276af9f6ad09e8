"""Bounded admission and drain: the engine refuses work it cannot hold."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import grpc

from services.engine.errors import EngineError


class InFlightLimit:
    """At most max_in_flight calls at once, none while draining; drain() waits for idle."""

    def __init__(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.admitted_total = 0
        self.draining = False
        self.handed_off = False
        self._streams: set[asyncio.Task[object]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        if self.draining:
            raise EngineError(grpc.StatusCode.UNAVAILABLE, "the engine is draining")
        if self.in_flight >= self.max_in_flight:
            raise EngineError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the engine is at its limit of {self.max_in_flight} concurrent requests",
            )
        self.in_flight += 1
        self.admitted_total += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

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
