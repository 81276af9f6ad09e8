"""Command line of the engine process."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from services.common.aio import run
from services.common.config_merge import merge_config
from services.common.logs import setup_logging
from services.common.telemetry import setup_tracing, shutdown_tracing
from services.common.tls import add_tls_flag
from services.engine.backends import BACKENDS
from services.engine.config import EngineConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tera engine", description="Run one engine process.")
    p.add_argument("--config", type=Path, help="YAML file with EngineConfig fields")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--backend", choices=list(BACKENDS))
    p.add_argument("--model-id")
    p.add_argument("--model-dir", type=Path)
    p.add_argument("--max-context-length", type=int)
    p.add_argument("--max-in-flight", type=int)
    p.add_argument("--metrics-port", type=int)
    p.add_argument("--health-port", type=int, help="plaintext grpc.health.v1 only, for probes")
    p.add_argument(
        "--mux-stream-port",
        type=int,
        help="the GenerateMux stream listener's port (transport stream; 0: any free port)",
    )
    p.add_argument("--drain-grace-s", type=float)
    p.add_argument("--coalesce-window-ms", dest="default_coalesce_window_ms", type=int)
    p.add_argument("--tool-call-parser")
    p.add_argument("--reasoning-parser")
    p.add_argument("--chat-template", type=Path)
    p.add_argument(
        "--variants",
        type=json.loads,
        help="extra model ids over the same weights, as JSON: "
        '[{"model_id": "...", "tool_call_parser": "hermes"}]',
    )
    p.add_argument(
        "--vllm", type=json.loads, help='vLLM options as JSON, e.g. {"dtype": "bfloat16"}'
    )
    p.add_argument("--scripted", type=json.loads, help="stand-in behaviour as JSON")
    add_tls_flag(p)
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(".cache"),
        help="where vLLM and torch keep compile caches",
    )
    return p


def _vllm_env_defaults(cache_dir: Path) -> None:
    """Settings measured on CPU (see docs): a stable compile cache across restarts."""
    cache_dir = cache_dir.resolve()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
    # Forced tool calls (tool_choice required or named) are decoded against the tools'
    # JSON schemas, so arguments validate on any model, whatever its native format.
    os.environ.setdefault("VLLM_ENFORCE_STRICT_TOOL_CALLING", "0")
    os.environ.setdefault("VLLM_CACHE_ROOT", str(cache_dir / "vllm"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir / "inductor"))


def config_from_args(args: argparse.Namespace) -> EngineConfig:
    merged = merge_config(args, skip={"cache_dir"}, sections=("vllm", "scripted", "tls"))
    return EngineConfig.model_validate(merged)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    setup_logging("engine")
    _vllm_env_defaults(args.cache_dir)
    from services.engine.server import serve  # after logging: backends import heavy modules

    provider = setup_tracing("tera-engine")
    try:
        run(lambda stop: serve(config, stop))
    finally:
        shutdown_tracing(provider)
