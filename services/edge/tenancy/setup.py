"""Builds the edge's tenancy from its config: catalog, keys, admin key, limiter store."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from services.catalog import Catalog, load_catalog
from services.catalog.schema import sha256_hex
from services.edge.config import EdgeConfig, is_loopback
from services.edge.tenancy.gate import Gate
from services.tenancy.keys import KeyStore, Tenant
from services.tenancy.limits import Limiter, MemoryStore
from services.tenancy.usage import UsageLedger

ADMIN_KEY_ENV = "TERA_ADMIN_KEY"


@dataclass
class Tenancy:
    catalog: Catalog | None
    keys: KeyStore
    admin: KeyStore
    gate: Gate
    store: Any

    async def close(self) -> None:
        if hasattr(self.store, "close"):
            await self.store.close()


def load(config: EdgeConfig) -> tuple[Catalog | None, KeyStore, KeyStore]:
    """Reads the catalog and keys; raises CatalogError/ValueError naming the problem."""
    catalog = load_catalog(config.catalog, check_weights=False) if config.catalog else None
    plain = KeyStore.from_plain([k.get_secret_value() for k in config.api_keys])
    from_catalog = KeyStore.from_catalog(catalog.keys) if catalog else KeyStore([])
    keys = from_catalog + plain
    admin_digests = []
    if catalog and catalog.admin:
        admin = catalog.admin
        value = admin.sha256 or (
            sha256_hex(os.environ[admin.env]) if admin.env in os.environ else None
        )
        if value is None:
            raise ValueError(f"admin key: environment variable {admin.env} is not set")
        admin_digests.append(value)
    if os.environ.get(ADMIN_KEY_ENV):
        admin_digests.append(sha256_hex(os.environ[ADMIN_KEY_ENV]))
    admin_keys = KeyStore([(d, Tenant("admin")) for d in admin_digests])
    if not keys and not is_loopback(config.host):
        raise ValueError(
            f"refusing to listen on {config.host} without API keys: set TERA_API_KEYS, "
            "api_keys in the config, or keys in the catalog; or bind to 127.0.0.1"
        )
    return catalog, keys, admin_keys


def build(config: EdgeConfig, registry: CollectorRegistry) -> Tenancy:
    catalog, keys, admin = load(config)
    usage = UsageLedger(registry)
    if catalog is not None:
        usage.publish_limits(catalog.keys)
    if catalog is not None and catalog.redis is not None:
        from services.tenancy.redis_store import RedisStore

        store: Any = RedisStore(catalog.redis)
    else:
        store = MemoryStore()
    gate = Gate(catalog, Limiter(store, usage.limiter_failures), usage)
    return Tenancy(catalog, keys, admin, gate, store)
