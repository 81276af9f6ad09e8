"""One attempt of a relayed call: the replica, the upstream call, its span, and the task
waiting for its first message. Closing it cancels the call, which the engine turns into
an abort."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from services.common.telemetry import RETRY_REASON
from services.router.policies import RouteRequest
from services.router.preempt import Slot
from services.router.replica import Replica

if TYPE_CHECKING:
    from services.router.refusal import Refusal


class AttemptFailed(Exception):
    def __init__(self, refusal: Refusal, *, retryable: bool) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal
        self.retryable = retryable


@dataclass
class Attempt:
    replica: Replica
    call: grpc.aio.UnaryStreamCall
    span: trace.Span
    hedge: bool
    first: asyncio.Task[bytes | None] = field(init=False)
    started: float = field(init=False)  # on its replica's breaker clock
    _held: contextlib.ExitStack = field(init=False, default_factory=contextlib.ExitStack)
    _prefill: contextlib.ExitStack = field(init=False, default_factory=contextlib.ExitStack)
    _closed: bool = field(init=False, default=False)
    # Given up past first_message_timeout_s for a retry elsewhere, whose budget token it
    # took as it did (relay.py: _open).
    retry_paid: bool = field(init=False, default=False)

    def wait_first(self, first: asyncio.Task[bytes | None], uncached_tokens: int = 0) -> None:
        """Counts the attempt as in flight on its replica until it is closed, and its
        uncached prompt as the replica's queued prefill until it answers."""
        self.started = self._held.enter_context(self.replica.track())
        self._prefill.enter_context(self.replica.prefilling(uncached_tokens))
        self.first = first

    def answered(self) -> None:
        """The first message came: the engine has prefilled the prompt."""
        self._prefill.close()

    def failed(self, failure: AttemptFailed) -> None:
        self.span.set_attribute(RETRY_REASON, failure.refusal.code.name)
        self.span.set_status(Status(StatusCode.ERROR, failure.refusal.message))

    @property
    def pending(self) -> bool:
        return not self.first.done()

    def close(self, *, abandoned: bool = False) -> None:
        """Ends the attempt; `abandoned`: it lost a race, which says nothing of its
        replica's health, so a breaker trial it carried is freed."""
        if self._closed:
            return
        self._closed = True
        self.first.cancel()
        self.call.cancel()
        if abandoned:
            self.replica.breaker.on_abandoned()
        self._prefill.close()
        self._held.close()
        self.span.end()


@dataclass(frozen=True)
class Upstream:
    """What every attempt of one call sends upstream."""

    method: str
    request: bytes
    route: RouteRequest
    forward: tuple[tuple[str, str], ...]
    context: grpc.aio.ServicerContext
    slot: Slot | None = None  # the call's place in the fair queue, if it has one
    # A preempted stream's continuation: the caller has messages already, so its wait
    # for the first one is a wait between messages to the caller (keepalives).
    continued: bool = False
