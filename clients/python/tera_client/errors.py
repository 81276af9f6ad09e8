"""Typed errors, named as the OpenAI SDK names them, made from gRPC status codes."""

from __future__ import annotations

import grpc

ERROR_PARAM = "tera-error-param"
RETRY_AFTER = "retry-after"


class APIError(Exception):
    """Any error from a Tera call. `code` is the gRPC status code, `param` the request
    field at fault (INVALID_ARGUMENT), `retry_after` the seconds the server asked for."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.retry_after = retry_after


class APIStatusError(APIError):
    """The server answered with an error status; `status_code` is its HTTP equivalent."""

    status_code = 500


class BadRequestError(APIStatusError):
    status_code = 400


class AuthenticationError(APIStatusError):
    status_code = 401


class PermissionDeniedError(APIStatusError):
    status_code = 403


class NotFoundError(APIStatusError):
    status_code = 404


class ConflictError(APIStatusError):
    status_code = 409


class RateLimitError(APIStatusError):
    status_code = 429


class InternalServerError(APIStatusError):
    status_code = 500


class ServiceUnavailableError(InternalServerError):
    """UNAVAILABLE from Tera itself: draining, no replica, or a replica lost mid-stream."""

    status_code = 503


class APIConnectionError(APIError):
    """No answer from the server: it could not be reached, or the connection broke."""


class APITimeoutError(APIConnectionError):
    """The call's deadline passed (DEADLINE_EXCEEDED)."""


class IncompleteStreamError(APIError):
    """A stream ended OK without every choice finishing: never expected from Tera."""


_BY_CODE: dict[grpc.StatusCode, type[APIError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: BadRequestError,
    grpc.StatusCode.FAILED_PRECONDITION: BadRequestError,
    grpc.StatusCode.OUT_OF_RANGE: BadRequestError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNIMPLEMENTED: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: ConflictError,
    grpc.StatusCode.ABORTED: ConflictError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimitError,
    grpc.StatusCode.DEADLINE_EXCEEDED: APITimeoutError,
    grpc.StatusCode.CANCELLED: APIConnectionError,
}


def _trailing(error: grpc.RpcError) -> dict[str, str]:
    trailing = getattr(error, "trailing_metadata", lambda: None)() or ()
    return {k: v for k, v in trailing if isinstance(v, str)}


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def from_rpc_error(error: grpc.RpcError) -> APIError:
    """The typed error for a failed call (grpc.RpcError or grpc.aio.AioRpcError)."""
    code = error.code()  # type: ignore[attr-defined]
    message = error.details() or code.name  # type: ignore[attr-defined]
    trailing = _trailing(error)
    retry_after = _seconds(trailing.get(RETRY_AFTER))
    cls = _BY_CODE.get(code, InternalServerError)
    if code == grpc.StatusCode.UNAVAILABLE:
        # Tera's own UNAVAILABLE carries retry-after; without it, the transport failed.
        cls = ServiceUnavailableError if retry_after is not None else APIConnectionError
    return cls(message, code=code, param=trailing.get(ERROR_PARAM), retry_after=retry_after)
