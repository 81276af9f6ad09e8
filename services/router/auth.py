"""Who calls the router, and may they: internal callers are tenants too.

A caller presents a tenant key (`authorization: Bearer KEY`, a catalog key); or is an
edge, known by its client certificate's common name, speaking for the end user it has
already authenticated (`tera-tenant` metadata); or is a service whose client
certificate names a key (`certificate_tenants`: its common name or a DNS or URI
subject alternative name, e.g. a SPIFFE id), so it needs no bearer key. `tera-tenant`
is believed from an edge identity only; anyone else's is ignored. None of these:
UNAUTHENTICATED; a model outside the key's allowlist: PERMISSION_DENIED. Health and
reflection stay open.
A key's caller then gets the key's limits, usage and fair-queue class (tenant_limits.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from pydantic import BaseModel, Field, model_validator

from services.catalog.schema import Limits
from services.catalog.schema import Redis as RedisSettings
from services.common import metadata
from services.common.mux import GENERATE_MUX
from services.common.priority import Priority
from services.router.wire import model_of
from services.tenancy.keys import KeyStore, Tenant

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
    # Its share and class in the fair queue, as for its HTTP traffic.
    weight: float = Field(1.0, gt=0)
    priority: Priority = "standard"

    def tenant(self) -> Tenant:
        models = frozenset(self.models) if self.models is not None else None
        return Tenant(self.name, models, self.limits, self.weight, self.priority)


class AuthConfig(BaseModel):
    required: bool = False
    # Client-certificate common names whose `tera-tenant` metadata is trusted.
    edge_identities: list[str] = Field(default_factory=lambda: ["tera-edge"])
    tenants: list[TenantKey] = Field(default_factory=list)
    # Client-certificate names (common name, DNS or URI SAN) -> the catalog key whose
    # tenant the caller is: internal services on mutual TLS need carry no bearer key.
    certificate_tenants: dict[str, str] = Field(default_factory=dict)
    # Where limits are kept; the catalog's, so HTTP and gRPC traffic share them.
    redis: RedisSettings | None = None

    @model_validator(mode="after")
    def _mapped_keys_exist(self) -> AuthConfig:
        if self.required:  # tenants are read from the catalog only then
            names = {t.name for t in self.tenants}
            unknown = sorted(set(self.certificate_tenants.values()) - names)
            if unknown:
                raise ValueError(f"certificate_tenants: no catalog key named {unknown}")
        return self


@dataclass(frozen=True)
class Caller:
    tenant: Tenant
    # True: a tenant of the router's own, limited and billed here; False: an edge's
    # user, limited and billed at the edge.
    own: bool = True

    def allows(self, model: str) -> bool:
        return self.tenant.allows(model)


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self._keys = KeyStore([(t.sha256, t.tenant()) for t in config.tenants])
        self._edges = frozenset(config.edge_identities)
        by_name = {t.name: t.tenant() for t in config.tenants}
        self._certificates = {
            cert: by_name[key] for cert, key in config.certificate_tenants.items() if key in by_name
        }

    def identify(self, invocation: dict[str, str], auth_context: dict[str, Any]) -> Caller:
        scheme, _, token = invocation.get(metadata.AUTHORIZATION, "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            tenant = self._keys.lookup(token.strip())
            if tenant is None:
                raise Refused(grpc.StatusCode.UNAUTHENTICATED, "invalid tenant key")
            return Caller(tenant)
        common = {n.decode() for n in auth_context.get("x509_common_name", [])}
        if common & self._edges:
            return Caller(Tenant(invocation.get(metadata.TENANT) or "edge"), own=False)
        for name in [*sorted(common), *sorted(_alternative_names(auth_context))]:
            if name in self._certificates:
                return Caller(self._certificates[name])
        raise Refused(
            grpc.StatusCode.UNAUTHENTICATED,
            "no credentials: send `authorization: Bearer KEY` metadata with a tenant key,"
            " or a client certificate the router maps to one",
        )


def _alternative_names(auth_context: dict[str, Any]) -> set[str]:
    """The peer certificate's DNS and URI subject alternative names, as gRPC reports them."""
    return {n.decode() for key in ("peer_dns", "peer_uri") for n in auth_context.get(key, [])}


def check(auth: Authenticator, method: str, request: Any, context: Any) -> Caller:
    """Raises Refused; returns the caller otherwise."""
    invocation = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
    caller = auth.identify(invocation, context.auth_context())
    if method.rpartition("/")[2] in _MODEL_METHODS:
        model = invocation.get(metadata.MODEL) or model_of(request)
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
        if method == GENERATE_MUX:  # each stream on it is guarded (server.py, `guarded`)
            return handler
        if handler.unary_unary:
            return _guard_unary(handler, self._auth, method)
        return None  # a kind of method nobody guards yet: closed (UNIMPLEMENTED)


def guarded(
    inner: Callable[[Any, Any], AsyncIterator[Any]],
    method: str,
    *,
    auth: Authenticator,
    limits: TenantLimits,
) -> Callable[[Any, Any], AsyncIterator[Any]]:
    """A server-streaming handler that serves only callers the router knows, within their
    allowlists and limits: a plain call's, or one stream's on a multiplexed call (whose
    context gives the stream's metadata and the call's peer certificate)."""

    async def guarded_stream(request: Any, context: Any) -> AsyncIterator[Any]:
        try:
            caller = check(auth, method, request, context)
        except Refused as exc:
            await context.abort(exc.code, exc.message)
        async for item in limits.admitted(inner, request, context, method=method, caller=caller):
            yield item

    return guarded_stream


def _guard_stream(
    handler: Any, auth: Authenticator, limits: TenantLimits, method: str
) -> grpc.RpcMethodHandler:
    return grpc.unary_stream_rpc_method_handler(
        guarded(handler.unary_stream, method, auth=auth, limits=limits),
        handler.request_deserializer,
        handler.response_serializer,
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
