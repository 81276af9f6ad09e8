"""Command line of the router process."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from services.catalog import Catalog, CatalogError, load_catalog
from services.catalog.schema import sha256_hex
from services.common.aio import run
from services.common.config_merge import merge_config
from services.common.logs import setup_logging
from services.common.telemetry import setup_tracing, shutdown_tracing
from services.common.tls import add_tls_flag
from services.router.config import RouterConfig
from services.router.server import serve
from services.tenancy.keys import keys_from_env, plain_key_name


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tera router", description="Run the router.")
    p.add_argument("--config", type=Path, help="YAML file with RouterConfig fields")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument(
        "--replica", dest="replicas", action="append", help="engine address host:port (repeatable)"
    )
    p.add_argument("--dns", action="append", help="DNS name:port of engine replicas (repeatable)")
    p.add_argument(
        "--known-model",
        dest="known_models",
        action="append",
        help="a model that exists before any replica names it: 503, not 404 (repeatable)",
    )
    p.add_argument("--policy")
    p.add_argument(
        "--engine-transport",
        choices=["per_call", "mux", "stream"],
        help="Generate streams over one link to each replica's stream listener where it "
        "offers one (stream, the default), over one GenerateMux call (mux), or one call each",
    )
    p.add_argument(
        "--mux-stream-port",
        type=int,
        help="the GenerateMux stream listener's port (transport stream; 0: any free port)",
    )
    p.add_argument("--metrics-port", type=int)
    p.add_argument("--health-port", type=int, help="plaintext grpc.health.v1 only, for probes")
    p.add_argument(
        "--catalog",
        type=Path,
        help="also route to the addresses and DNS names the catalog's models list",
    )
    p.add_argument(
        "--require-auth",
        dest="require_auth",
        action="store_true",
        default=None,
        help="callers must be tenants (auth.required): keys from --catalog and "
        "TERA_API_KEYS, the edge and mapped certificates",
    )
    add_tls_flag(p)
    return p


def config_from_args(args: argparse.Namespace) -> RouterConfig:
    """Re-read on SIGHUP too: edits to the config or the catalog apply without restart."""
    config = merge_config(args, skip={"catalog", "require_auth"}, sections=("tls",))
    auth = config.setdefault("auth", {})
    if args.require_auth:
        auth["required"] = True
    if auth.get("required"):  # keys from env vars must be set only then
        auth["tenants"] = [*auth.get("tenants", []), *plain_tenant_keys(keys_from_env())]
    if args.catalog is not None:
        catalog = load_catalog(args.catalog, check_weights=False)
        if catalog.redis is not None:  # the fair queue's counters, shared with other routers
            config.setdefault("redis", catalog.redis.model_dump())
        if auth.get("required"):
            redis = catalog.redis.model_dump() if catalog.redis else None
            auth["tenants"] = [*tenant_keys(catalog), *auth["tenants"]]
            auth["redis"] = redis
        for model in catalog.models:
            config["replicas"] = [*config.get("replicas", []), *model.serving.addresses]
            config["known_models"] = [*config.get("known_models", []), model.id]
            if model.serving.dns:
                config["dns"] = [*config.get("dns", []), model.serving.dns]
    return RouterConfig.model_validate(config)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging("router")
    try:
        config_from_args(args)  # fail fast, with the problem named, on a bad config
    except (ValidationError, OSError, yaml.YAMLError, CatalogError) as exc:
        sys.exit(f"tera router: invalid configuration: {exc}")
    provider = setup_tracing("tera-router")
    try:
        run(lambda stop: serve(lambda: config_from_args(args), stop))
    finally:
        shutdown_tracing(provider)


def tenant_keys(catalog: Catalog) -> list[dict[str, Any]]:
    """The catalog's keys as the router checks them: digests, and allowlists spelled
    out as every id and alias of each allowed model."""
    names = catalog.names()
    return [
        {
            "name": key.name,
            "sha256": key.digest(),
            "limits": key.limits.model_dump(),
            "weight": key.weight,
            "priority": key.priority,
            "models": None
            if key.models is None
            else sorted({n for m in key.models for n in (names[m].id, *names[m].aliases)}),
        }
        for key in catalog.keys
    ]


def plain_tenant_keys(keys: list[str]) -> list[dict[str, Any]]:
    """Keys without a catalog entry (TERA_API_KEYS): every model, no limits, named as
    the edge names them."""
    return [{"name": plain_key_name(i), "sha256": sha256_hex(k)} for i, k in enumerate(keys)]
