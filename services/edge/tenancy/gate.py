"""What every request for a model passes through at the edge: model names (aliases,
allowlists), the key's limits and its usage. Without a catalog, model names
pass through unchanged and only the router decides whether they exist."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from services.catalog import Catalog, ModelEntry
from services.edge.errors import OpenAIError, model_not_found
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.tenancy.keys import ANONYMOUS, Tenant
from services.tenancy.limits import Limiter, OverLimit, Reservation
from services.tenancy.usage import UsageLedger

TENANT = "tera.tenant"  # request key


def tenant_of(http: web.Request) -> Tenant:
    return http.get(TENANT, ANONYMOUS)


@dataclass(frozen=True)
class Resolved:
    canonical: str  # sent to the router
    reported: str  # put in the response's `model`
    entry: ModelEntry | None = None


@dataclass
class Gate:
    catalog: Catalog | None
    limiter: Limiter
    usage: UsageLedger
    _names: dict[str, ModelEntry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._names = self.catalog.names() if self.catalog else {}

    def resolve(self, http: web.Request, asked: str) -> Resolved:
        tenant = tenant_of(http)
        if self.catalog is None:
            if not tenant.allows(asked):
                raise model_not_found(asked)
            return Resolved(asked, asked)
        entry = self._names.get(asked)
        # Outside the key's allowlist, a model does not exist for this caller.
        if entry is None or not tenant.allows(asked, entry.id, *entry.aliases):
            raise model_not_found(asked)
        reported = asked if self.catalog.report_alias else entry.id
        return Resolved(entry.id, reported, entry)

    @contextlib.asynccontextmanager
    async def account(
        self, http: web.Request, headers: dict[str, str], resolved: Resolved
    ) -> AsyncIterator[Account]:
        """Accounts one request of a key: yields its Account, whose `reserve` is awaited
        once the request is valid; at the end, settles the limits with the tokens the
        streams reported and records usage, errors (validation, limits, upstream)
        included."""
        account = Account(self.limiter, tenant_of(http), headers)
        status = 200
        try:
            yield account
        except OpenAIError as exc:
            status = exc.status
            raise
        except BaseException:
            status = 499
            raise
        finally:
            await account.settle()
            prompt, completion = account.prompt_tokens, account.completion_tokens
            self.usage.record(account.tenant.name, resolved.canonical, status, prompt, completion)


@dataclass
class Account:
    """One request's bill: the limits it reserved and the tokens its streams reported."""

    limiter: Limiter
    tenant: Tenant
    headers: dict[str, str]  # the response's: x-ratelimit headers are added here
    reservation: Reservation | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    async def reserve(self, estimated_tokens: int) -> None:
        """Applies the key's limits (raising 429 when over) and adds their headers."""
        try:
            self.reservation = await self.limiter.reserve(self.tenant, estimated_tokens)
        except OverLimit as over:
            raise OpenAIError(
                429, over.message, type="rate_limit_error", code=over.code, headers=over.headers
            ) from None
        self.headers.update(self.reservation.headers)

    def add_usage(self, usage: pb.Usage) -> None:
        """Called with each upstream stream's final usage (several for many prompts)."""
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens

    async def settle(self) -> None:
        if self.reservation is not None:
            await self.reservation.settle(self.prompt_tokens + self.completion_tokens)
