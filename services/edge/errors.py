"""OpenAI's error envelope, and the one map from failures to HTTP statuses."""

from __future__ import annotations

import json
from typing import Any

import grpc
from pydantic import ValidationError

from services.common import metadata
from services.common.bounded import clip, clip_message

INVALID_REQUEST = "invalid_request_error"


class OpenAIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        message = clip_message(message)  # never the caller's input, unbounded
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = clip(param) if param else param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def json_bytes(self) -> bytes:
        return json.dumps(self.body()).encode()


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"The model `{clip(model)}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


class FieldError(ValueError):
    """Raised by cross-field validators to name the field at fault."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


def from_validation_error(exc: ValidationError) -> OpenAIError:
    """The first problem pydantic found, with its location as OpenAI's `param`."""
    first = exc.errors(include_url=False)[0]
    param = _param_path(first.get("loc", ()))
    message = first.get("msg", "invalid request").removeprefix("Value error, ")
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        param = ".".join(p for p in (param, cause.param) if p)
        message = cause.message
    if param:
        message = f"Invalid value for '{param}': {message}"
    return bad_request(message, param=param or None, code="invalid_value")


def _param_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _is_union_tag(part):
            continue
        else:
            path += f".{part}" if path else str(part)
    return path


def _is_union_tag(part: str) -> bool:
    # pydantic adds the member type name ("str", "list[...]", "function-after[...]") to
    # the location of union errors; they are not request fields.
    return "[" in part or part in {"str", "int", "float", "bool", "list", "dict", "none"}


_GRPC_TO_HTTP: dict[grpc.StatusCode, tuple[int, str, str | None]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, INVALID_REQUEST, None),
    grpc.StatusCode.OUT_OF_RANGE: (400, INVALID_REQUEST, None),
    grpc.StatusCode.FAILED_PRECONDITION: (400, INVALID_REQUEST, None),
    grpc.StatusCode.NOT_FOUND: (404, INVALID_REQUEST, "model_not_found"),
    grpc.StatusCode.UNIMPLEMENTED: (400, INVALID_REQUEST, "unsupported"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error", "overloaded"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable", "no_replica"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout", "timeout"),
    grpc.StatusCode.CANCELLED: (499, "cancelled", None),
}


# What grpc says when a peer's headers or trailers exceed its metadata limit.
_TRANSPORT_LIMIT = "metadata size exceeds"


def from_grpc(
    exc: grpc.aio.AioRpcError, *, committed: bool = False, known_model: bool = False
) -> OpenAIError:
    """Maps an upstream failure. After output began, server faults read as 502. A model
    the edge knows exists (its catalog's) that the router has no word of is unavailable
    for now (503, retried by clients), not missing (404, which they do not retry)."""
    code = exc.code()
    trailing = dict(exc.trailing_metadata() or ())
    message = exc.details() or code.name
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and _TRANSPORT_LIMIT in message:
        # gRPC's own limit on an upstream answer, not a rate limit: never a 429.
        code, message = grpc.StatusCode.INTERNAL, "the upstream error was too large to relay"
    if code == grpc.StatusCode.NOT_FOUND and known_model:
        code, message = grpc.StatusCode.UNAVAILABLE, "no replica of this model is up yet"
    status, err_type, err_code = _GRPC_TO_HTTP.get(code, (500, "server_error", None))
    if code == grpc.StatusCode.UNAVAILABLE and not committed:
        # Nothing can answer right now (the router restarting, no replica up): come back.
        trailing.setdefault("retry-after", "1")
    headers = {}
    if "retry-after" in trailing:
        headers["Retry-After"] = str(trailing["retry-after"])
    if status >= 500 and code != grpc.StatusCode.DEADLINE_EXCEEDED:
        # "Come back later" (a model loading, no replica up) is not a backend failure.
        unavailable = code == grpc.StatusCode.UNAVAILABLE and not committed
        if not unavailable:
            message = f"The model backend failed: {message}"
        status, err_type = (502 if committed or status == 500 else status), "server_error"
    param = trailing.get(metadata.ERROR_PARAM)
    if code == grpc.StatusCode.NOT_FOUND:
        param = "model"
    return OpenAIError(status, message, type=err_type, param=param, code=err_code, headers=headers)
