"""Who calls the router, and may they: internal callers are tenants too.

A caller presents a tenant key (`authorization: Bearer KEY`, a catalog key), or is an
edge, known by its client certificate's common name, speaking for the end user it has
already authenticated (`tera-tenant` metadata). That metadata is believed from an edge
identity only; anyone else's is ignored. No key and no edge certificate: UNAUTHENTICATED;
a model outside the key's allowlist: PERMISSION_DENIED. Health and reflection stay open.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from pydantic import BaseModel, Field

from services.catalog.schema import Limits
from services.catalog.schema import Redis as RedisSettings
from services.common import metadata
from services.router.wire import WireError, model_of

if TYPE_CHECKING:  # tenant_limits imports grpc and redis; config imports this module
    from services.router.tenant_limits import TenantLimits

GUARDED_PREFIX = "/tera.v1.Engine/"
_MODEL_METHODS = ("Generate", "Synthesize")


class TenantKey(BaseModel):
    name: str
    sha256: str
    # Names the key may use (ids and aliases); None: every model.
    models: list[str] | None = None
    limits: Limits = Field(default_factory=Limits)


class AuthConfig(BaseModel):
    required: bool = False
    # Client-certificate common names whose `tera-tenant` metadata is trusted.
    edge_identities: list[str] = Field(default_factory=lambda: ["tera-edge"])
    tenants: list[TenantKey] = Field(default_factory=list)
    # Where limits are kept; the catalog's, so HTTP and gRPC traffic share them.
    redis: RedisSettings | None = None


@dataclass(frozen=True)
class Caller:
    tenant: str
    models: frozenset[str] | None = None
    limits: Limits | None = None  # None: limited elsewhere (the edge)

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self._keys = [
            (bytes.fromhex(t.sha256), Caller(t.name, _allowlist(t), t.limits))
            for t in config.tenants
        ]
        self._edges = frozenset(config.edge_identities)

    def identify(self, invocation: dict[str, str], auth_context: dict[str, Any]) -> Caller:
        scheme, _, token = invocation.get(metadata.AUTHORIZATION, "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            caller = self._lookup(token.strip())
            if caller is None:
                raise Refused(grpc.StatusCode.UNAUTHENTICATED, "invalid tenant key")
            return caller
        names = {n.decode() for n in auth_context.get("x509_common_name", [])}
        if names & self._edges:
            return Caller(invocation.get(metadata.TENANT) or "edge")
        raise Refused(
            grpc.StatusCode.UNAUTHENTICATED,
            "no credentials: send `authorization: Bearer KEY` metadata with a tenant key",
        )

    def _lookup(self, token: str) -> Caller | None:
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for stored, caller in self._keys:  # every entry compared: constant time
            if hmac.compare_digest(digest, stored):
                found = caller
        return found


def _allowlist(key: TenantKey) -> frozenset[str] | None:
    return frozenset(key.models) if key.models is not None else None


def check(auth: Authenticator, method: str, request: Any, context: Any) -> Caller:
    """Raises Refused; returns the caller otherwise."""
    invocation = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
    caller = auth.identify(invocation, context.auth_context())
    if method.rpartition("/")[2] in _MODEL_METHODS:
        try:
            model = invocation.get(metadata.MODEL) or model_of(request)
        except WireError:
            model = ""
        if not caller.allows(model):
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, "this key may not use that model")
    return caller


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, auth: Authenticator, limits: TenantLimits) -> None:
        self._auth = auth
        self._limits = limits

    async def intercept_service(
        self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        method = details.method
        if handler is None or not method.startswith(GUARDED_PREFIX):
            return handler
        if handler.unary_stream:
            return _guard_stream(handler, self._auth, self._limits, method)
        if handler.unary_unary:
            return _guard_unary(handler, self._auth, method)
        return None  # a kind of method nobody guards yet: closed (UNIMPLEMENTED)


def _guard_stream(
    handler: Any, auth: Authenticator, limits: TenantLimits, method: str
) -> grpc.RpcMethodHandler:
    inner = handler.unary_stream

    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            caller = check(auth, method, request, context)
        except Refused as exc:
            await context.abort(exc.code, exc.message)
        stream = inner(request, context)
        admitted = limits.admitted(stream, context, tenant=caller.tenant, limits=caller.limits)
        async for item in admitted:
            yield item

    return grpc.unary_stream_rpc_method_handler(
        guarded, handler.request_deserializer, handler.response_serializer
    )


def _guard_unary(handler: Any, auth: Authenticator, method: str) -> grpc.RpcMethodHandler:
    inner = handler.unary_unary

    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            check(auth, method, request, context)
        except Refused as exc:
            await context.abort(exc.code, exc.message)
        return await inner(request, context)

    return grpc.unary_unary_rpc_method_handler(
        guarded, handler.request_deserializer, handler.response_serializer
    )
