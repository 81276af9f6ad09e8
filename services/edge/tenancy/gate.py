"""What every generation passes through at the edge: model names (aliases, allowlists),
max_tokens defaults and caps, and the key's limits. Without a catalog, model names
pass through unchanged and only the router decides whether they exist."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from services.catalog import Catalog, ModelEntry
from services.edge.errors import OpenAIError, bad_request, model_not_found
from services.edge.observe import REQUEST_LOG
from services.edge.tenancy.keys import ANONYMOUS, Tenant
from services.edge.tenancy.limits import Limiter, Reservation
from services.edge.tenancy.usage import UsageLedger

TENANT = "tera.tenant"  # request key


def tenant_of(http: web.Request) -> Tenant:
    return http.get(TENANT, ANONYMOUS)


@dataclass
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

    @staticmethod
    def max_tokens(resolved: Resolved, requested: int | None) -> int | None:
        limits = resolved.entry.max_tokens if resolved.entry else None
        if limits is None:
            return requested
        if requested is None:
            return limits.default
        if limits.max is not None and requested > limits.max:
            raise bad_request(
                f"max_tokens is {requested}, above this model's maximum of {limits.max}",
                param="max_tokens",
            )
        return requested

    async def admit(self, http: web.Request, estimated_tokens: int) -> Reservation:
        return await self.limiter.reserve(tenant_of(http), estimated_tokens)

    @contextlib.asynccontextmanager
    async def guard(
        self, http: web.Request, headers: dict[str, str], resolved: Resolved
    ) -> AsyncIterator[Callable[[int], Awaitable[None]]]:
        """Accounts one request of a key: yields admit(estimated_tokens), to be awaited
        once the request is valid (it applies the limits and adds the x-ratelimit
        headers to `headers`); at the end, settles the limits with the real token count
        and records usage, errors (validation, limits, upstream) included."""
        admitted: list[Reservation] = []

        async def admit(estimated_tokens: int) -> None:
            reservation = await self.admit(http, estimated_tokens)
            headers.update(reservation.headers)
            admitted.append(reservation)

        status = 200
        try:
            yield admit
        except OpenAIError as exc:
            status = exc.status
            raise
        except BaseException:
            status = 499
            raise
        finally:
            fields = http.get(REQUEST_LOG, {})
            prompt = fields.get("prompt_tokens", 0)
            completion = fields.get("completion_tokens", 0)
            if admitted:
                await admitted[0].settle(prompt + completion)
            self.usage.record(tenant_of(http).name, resolved.canonical, status, prompt, completion)

    def estimate(self, prompt_chars: int, max_tokens: int | None, context: int | None) -> int:
        """Tokens to reserve before the real count is known (about 4 characters a token)."""
        completion = max_tokens or (context or 2048) // 4
        return prompt_chars // 4 + 1 + completion
