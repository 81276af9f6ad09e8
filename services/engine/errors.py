"""Errors an engine returns to its caller, as gRPC status codes."""

from __future__ import annotations

import grpc

from services.common.bounded import clip, clip_message


class EngineError(Exception):
    """An error with a status code the caller can act on (retry or not)."""

    def __init__(self, code: grpc.StatusCode, message: str, *, param: str | None = None):
        message = clip_message(message)  # vLLM's messages may quote the whole input
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = clip(param) if param else param


def invalid_argument(message: str, *, param: str | None = None) -> EngineError:
    return EngineError(grpc.StatusCode.INVALID_ARGUMENT, message, param=param)
