"""Command line of the edge process. API keys come from TERA_API_KEYS (comma-separated)
or the config file, never from flags, so they stay out of `ps` output."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from services.common.aio import run
from services.common.config_merge import merge_config
from services.common.logs import setup_logging
from services.common.telemetry import setup_tracing, shutdown_tracing
from services.common.tls import add_tls_flag
from services.edge.app import serve
from services.edge.config import EdgeConfig
from services.edge.tenancy import setup
from services.tenancy.keys import keys_from_env


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tera edge", description="Run the OpenAI-compatible edge.")
    p.add_argument("--config", type=Path, help="YAML file with EdgeConfig fields")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--ops-host", help="operations listener address (default 127.0.0.1)")
    p.add_argument("--ops-port", type=int, help="operations port: /metrics and /admin/*")
    p.add_argument("--router", help="router (or engine) address host:port")
    p.add_argument(
        "--router-transport",
        choices=["per_call", "mux", "stream"],
        help="Generate streams over one link to the router's stream listener where it "
        "offers one (stream, the default), over one GenerateMux call (mux), or one call each",
    )
    p.add_argument("--coalesce-window-ms", type=int)
    p.add_argument("--catalog", type=Path, help="model catalog and keys (YAML)")
    p.add_argument(
        "--responses-db",
        type=Path,
        help="SQLite file for stored responses (unless the catalog names Redis)",
    )
    p.add_argument(
        "--prefix-tokenizer",
        dest="prefix_tokenizers",
        action="append",
        type=_model_and_source,
        metavar="MODEL=TOKENIZER",
        help="name this model's prompt prefixes for cache_aware routing (repeatable)",
    )
    add_tls_flag(p)
    return p


def _model_and_source(text: str) -> tuple[str, str]:
    model, sep, source = text.partition("=")
    if not (model and sep and source):
        raise argparse.ArgumentTypeError(f"expected MODEL=TOKENIZER, got {text!r}")
    return model, source


def config_from_args(args: argparse.Namespace) -> EdgeConfig:
    if args.prefix_tokenizers:  # pairs from the flags, merged over the file's key by key
        args.prefix_tokenizers = dict(args.prefix_tokenizers)
    config = merge_config(args, sections=("tls", "prefix_tokenizers"))
    env_keys = keys_from_env()
    if env_keys:
        config["api_keys"] = env_keys
    return EdgeConfig.model_validate(config)


def main(argv: list[str] | None = None) -> None:
    setup_logging("edge")
    try:
        config = config_from_args(build_parser().parse_args(argv))
        setup.load(config)  # refuse to start on a bad catalog or an unprotected bind
    except (ValidationError, ValueError, OSError) as exc:
        sys.exit(f"tera edge: invalid configuration: {exc}")
    provider = setup_tracing("tera-edge")
    try:
        run(lambda stop: serve(config, stop, provider))
    finally:
        shutdown_tracing(provider)
