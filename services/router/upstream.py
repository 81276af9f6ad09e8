"""What every attempt of one relayed call shares: the upstream request, the caller's
remaining time, and the rule that a failure after the first message marks the span."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from services.router.policies import RouteRequest
from services.router.refusal import Refusal


@contextlib.contextmanager
def marks_failure(span: trace.Span) -> Iterator[None]:
    """A failure after the first message marks the attempt's span failed."""
    try:
        yield
    except Refusal as refusal:
        span.set_status(Status(StatusCode.ERROR, refusal.message))
        raise


@dataclass(frozen=True)
class Upstream:
    """What every attempt of one call sends upstream."""

    method: str
    request: bytes
    route: RouteRequest
    forward: tuple[tuple[str, str], ...]
    context: grpc.aio.ServicerContext


def remaining(context: grpc.aio.ServicerContext) -> float | None:
    left = context.time_remaining()
    if left is None:
        return None
    return max(left, 0.0)
