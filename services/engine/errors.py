"""Errors an engine returns to its caller, as gRPC status codes."""

from __future__ import annotations

import grpc


class EngineError(Exception):
    """An error with a status code the caller can act on (retry or not)."""

    def __init__(self, code: grpc.StatusCode, message: str, *, param: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


def invalid_argument(message: str, *, param: str | None = None) -> EngineError:
    return EngineError(grpc.StatusCode.INVALID_ARGUMENT, message, param=param)
