"""How the router ends a call itself, and the status details callers act on."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from services.common import metadata
from services.common.bounded import clip_message, clip_trailers

RETRY_AFTER = "retry-after"
# The same delay for gRPC's own retry policy, which reads only this key (milliseconds).
RETRY_PUSHBACK = "grpc-retry-pushback-ms"
# Final answers after which the caller should come back later.
TRY_LATER = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)


@dataclass
class Refusal(Exception):
    """The router ends the call itself: no replica could (or should) take it."""

    code: grpc.StatusCode
    message: str
    retry_after_s: int | None = None
    trailing: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:  # relayed engine text: bounded, whatever it quotes
        self.message, self.trailing = clip_message(self.message), clip_trailers(self.trailing)

    def trailing_metadata(self, default_retry_after_s: int) -> tuple[tuple[str, str], ...]:
        """The trailers to end the call with: Retry-After (seconds, and as gRPC's
        pushback in ms) whenever the caller should come back later."""
        retry_after = self.retry_after_s
        if retry_after is None and self.code in TRY_LATER:
            retry_after = default_retry_after_s
        if retry_after is None:
            return self.trailing
        return (
            *self.trailing,
            (RETRY_AFTER, str(retry_after)),
            (RETRY_PUSHBACK, str(retry_after * 1000)),
        )


def no_model() -> Refusal:
    return Refusal(
        grpc.StatusCode.INVALID_ARGUMENT,
        "no model: set the request's `model` field or the `tera-model` metadata",
        trailing=((metadata.ERROR_PARAM, "model"),),
    )


def remaining(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's deadline as a timeout for an upstream call (None: no deadline)."""
    left = context.time_remaining()
    if left is None:
        return None
    return max(left, 0.0)


def caller_deadline(code: grpc.StatusCode, context: grpc.aio.ServicerContext) -> bool:
    """Whether an upstream call's status is the caller's deadline passing: a
    DEADLINE_EXCEEDED while the caller has a deadline is, since every upstream call is given
    it (`remaining`). Judged by the code, not by a second look at time_remaining, which
    may still show a moment left: grpc keeps the caller's copy of the deadline, while a
    multiplexed stream (engine_transport: mux) times out on the event loop's clock."""
    return code == grpc.StatusCode.DEADLINE_EXCEEDED and context.time_remaining() is not None
