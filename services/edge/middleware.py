"""Cross-cutting HTTP concerns: request ids, auth, and one error shape for everything."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web
from pydantic import ValidationError

from services.edge.errors import OpenAIError, from_validation_error
from services.edge.observe import REQUEST_LOG, EdgeMetrics, log_access
from services.edge.tenancy.gate import TENANT
from services.tenancy.keys import KeyStore, Tenant

log = logging.getLogger("tera.edge")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Paths that answer without a key (probes). /metrics and /admin/* live on the
# operations port (services/edge/ops.py), not here.
PUBLIC_PATHS = frozenset({"/health", "/ready"})


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    supplied = request.headers.get("X-Request-Id", "")
    request["request_id"] = supplied if _REQUEST_ID.match(supplied) else uuid.uuid4().hex
    try:
        return await handler(request)
    except OpenAIError as exc:
        return _error_response(exc, request)
    except ValidationError as exc:
        return _error_response(from_validation_error(exc), request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error_response(_from_http_exception(exc, request), request)
    except (ConnectionResetError, ConnectionError):
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error_response(
            OpenAIError(
                500, "The server had an error processing your request.", type="server_error"
            ),
            request,
        )


def _from_http_exception(exc: web.HTTPException, request: web.Request) -> OpenAIError:
    if exc.status == 404:
        return OpenAIError(
            404,
            f"Tera does not offer {request.method} {request.path}.",
            code="unknown_url",
        )
    if exc.status == 405:
        return OpenAIError(
            405,
            f"{request.method} is not allowed on {request.path}.",
            code="method_not_allowed",
            headers={"Allow": exc.headers.get("Allow", "")},
        )
    if exc.status == 413:
        return OpenAIError(413, "The request body is too large.", code="request_too_large")
    return OpenAIError(exc.status, exc.reason or "request failed")


def _error_response(exc: OpenAIError, request: web.Request) -> web.Response:
    headers = {**exc.headers, "X-Request-Id": request["request_id"]}
    return web.Response(
        status=exc.status, body=exc.json_bytes(), content_type="application/json", headers=headers
    )


def access(metrics: EdgeMetrics) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Request metrics and one JSON access-log line per request."""

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        endpoint = _endpoint(request)
        started = time.monotonic()
        metrics.in_flight.labels(endpoint).inc()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except asyncio.CancelledError:
            status = 499  # the client went away
            raise
        finally:
            elapsed = time.monotonic() - started
            metrics.in_flight.labels(endpoint).dec()
            # Only models that exist become label values (no cardinality from typos).
            model = (
                request.get(REQUEST_LOG, {}).get("model", "") if status not in (400, 404) else ""
            )
            metrics.requests.labels(endpoint, model, str(status)).inc()
            metrics.duration.labels(endpoint, model).observe(elapsed)
            log_access(request, status, elapsed, endpoint)

    return observe


def _endpoint(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def auth(keys: KeyStore) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Bearer keys: each resolves to its tenant (request[TENANT]). With no keys
    configured, everyone is the anonymous tenant."""

    @web.middleware
    async def check_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        if keys:
            request[TENANT] = _authenticate(request.headers.get("Authorization", ""), keys)
        return await handler(request)

    return check_key


def admin_only(admin: KeyStore) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """On the operations port: /admin/ takes the separate admin key (404 when none is
    configured); everything else there (metrics, health) answers without one."""

    @web.middleware
    async def check_admin(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/admin/"):
            if not admin:
                raise OpenAIError(404, f"Tera does not offer {request.path}.", code="unknown_url")
            _authenticate(request.headers.get("Authorization", ""), admin)
        return await handler(request)

    return check_admin


def _authenticate(header: str, keys: KeyStore) -> Tenant:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise OpenAIError(
            401,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            code="missing_api_key",
        )
    tenant = keys.lookup(token.strip())
    if tenant is None:
        raise OpenAIError(401, "Incorrect API key provided.", code="invalid_api_key")
    return tenant
