"""API keys as tenants: stored as SHA-256 digests, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field

from services.catalog import KeyEntry, Limits
from services.common import metadata


@dataclass(frozen=True)
class Tenant:
    name: str
    models: frozenset[str] | None = None  # allowlist; None: every model
    limits: Limits = field(default_factory=Limits)
    weight: float = 1.0
    priority: str = "standard"

    def fair_metadata(self, cost: int) -> list[tuple[str, str]]:
        """What the router's fair queue needs: who, their share and class, and the
        request's estimated tokens."""
        return [
            (metadata.TENANT, self.name),
            (metadata.WEIGHT, f"{self.weight:g}"),
            (metadata.PRIORITY, self.priority),
            (metadata.COST, str(cost)),
        ]

    def allows(self, *names: str) -> bool:
        return self.models is None or any(n in self.models for n in names)


ANONYMOUS = Tenant("anonymous")
API_KEYS_ENV = "TERA_API_KEYS"  # comma-separated keys without a catalog entry


def keys_from_env() -> list[str]:
    return [k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip()]


def plain_key_name(index: int) -> str:
    """The tenant name of the index-th plain key: the same at every door."""
    return f"key-{index + 1}"


class KeyStore:
    def __init__(self, entries: list[tuple[str, Tenant]]) -> None:
        """entries: (sha256 hex digest of the key, its tenant)."""
        self._entries = [(bytes.fromhex(d), t) for d, t in entries]

    @classmethod
    def from_catalog(cls, keys: list[KeyEntry]) -> KeyStore:
        return cls(
            [
                (
                    k.digest(),
                    Tenant(
                        k.name,
                        frozenset(k.models) if k.models is not None else None,
                        k.limits,
                        k.weight,
                        k.priority,
                    ),
                )
                for k in keys
            ]
        )

    @classmethod
    def from_plain(cls, keys: list[str]) -> KeyStore:
        return cls(
            [
                (hashlib.sha256(k.encode()).hexdigest(), Tenant(plain_key_name(i)))
                for i, k in enumerate(keys)
            ]
        )

    def __add__(self, other: KeyStore) -> KeyStore:
        return KeyStore([(d.hex(), t) for d, t in [*self._entries, *other._entries]])

    def __bool__(self) -> bool:
        return bool(self._entries)

    def lookup(self, token: str) -> Tenant | None:
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        # Every entry is compared, so the time taken says nothing about which matched.
        for stored, tenant in self._entries:
            if hmac.compare_digest(digest, stored):
                found = tenant
        return found
