"""Command line of the router process."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from pydantic import ValidationError

from services.common.aio import run
from services.common.logs import setup_logging
from services.common.telemetry import setup_tracing, shutdown_tracing
from services.router.config import RouterConfig
from services.router.server import serve


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tera router", description="Run the router.")
    p.add_argument("--config", type=Path, help="YAML file with RouterConfig fields")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument(
        "--replica", dest="replicas", action="append", help="engine address host:port (repeatable)"
    )
    p.add_argument("--dns", action="append", help="DNS name:port of engine replicas (repeatable)")
    p.add_argument("--policy")
    p.add_argument("--metrics-port", type=int)
    return p


def config_from_args(args: argparse.Namespace) -> RouterConfig:
    data: dict = yaml.safe_load(args.config.read_text()) if args.config else {}
    overrides = {k: v for k, v in vars(args).items() if k != "config" and v is not None}
    return RouterConfig.model_validate({**data, **overrides})


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging("router")
    try:
        config_from_args(args)  # fail fast, with the problem named, on a bad config
    except (ValidationError, OSError, yaml.YAMLError) as exc:
        sys.exit(f"tera router: invalid configuration: {exc}")
    provider = setup_tracing("tera-router")
    try:
        run(lambda stop: serve(lambda: config_from_args(args), stop))
    finally:
        shutdown_tracing(provider)
