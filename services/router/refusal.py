"""A call the router ends itself, with the status, message and trailers to end it with."""

from __future__ import annotations

from dataclasses import dataclass

import grpc


@dataclass
class Refusal(Exception):
    """The router ends the call itself: no replica could (or should) take it."""

    code: grpc.StatusCode
    message: str
    retry_after_s: int | None = None
    trailing: tuple[tuple[str, str], ...] = ()
