"""`tera run` / `make run`: the whole gateway on one machine.

Prepares the default model if needed, starts engine replica(s), the router and the edge
as separate processes, waits until the edge lists the model, prints how to call it, and
stops everything on Ctrl-C or SIGTERM, leaving no process behind.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from services.catalog import CatalogError, ModelEntry, load_catalog
from services.common.processes import ManagedProcess, wait_until
from services.common.readiness import (
    grpc_serving,
    http_healthy,
    router_has_replicas,
    router_lists_models,
)
from services.engine.model_prep import DEFAULT_MODEL_ID, default_model_dir, prepare_default_model

SPEECH_MODEL_ID = "rhasspy/piper-en_US-joe-medium"


def vllm_engine_args(
    model_dir: Path,
    cache_dir: Path,
    *,
    model_id: str = DEFAULT_MODEL_ID,
    eager: bool = True,
) -> list[str]:
    """Arguments of a vLLM engine process serving one local model folder."""
    return [
        "--model-dir", str(model_dir),
        "--model-id", model_id,
        "--cache-dir", str(cache_dir),
        "--vllm", json.dumps({"enforce_eager": eager}),
    ]  # fmt: skip


def speech_engine_args(model_id: str = SPEECH_MODEL_ID) -> list[str]:
    """Arguments of a Piper speech engine process."""
    return ["--backend", "piper", "--model-id", model_id]


def scripted_engine_args(model_id: str, **behaviour: object) -> list[str]:
    """Arguments of a stand-in engine process (see ScriptedOptions for the behaviour)."""
    return ["--backend", "scripted", "--model-id", model_id, "--scripted", json.dumps(behaviour)]


@dataclass
class StackPlan:
    """What to run where. Tests build plans with free ports and scripted engines."""

    host: str = "127.0.0.1"
    edge_port: int = 8000
    router_port: int = 50051
    engine_ports: list[int] = field(default_factory=lambda: [50061])
    engine_args: list[str] = field(default_factory=list)
    # Extra arguments for engine i (e.g. a different scripted behaviour per replica).
    per_engine_args: list[list[str]] = field(default_factory=list)
    model_ids: list[str] = field(default_factory=lambda: [DEFAULT_MODEL_ID])
    router_args: list[str] = field(default_factory=list)
    edge_args: list[str] = field(default_factory=list)
    edge_env: dict[str, str] = field(default_factory=dict)
    # Environment for every process (e.g. OTEL_* settings).
    env: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.edge_port}/v1"


class Stack:
    def __init__(self, plan: StackPlan) -> None:
        self.plan = plan
        self.engines: list[ManagedProcess] = []
        self.router: ManagedProcess | None = None
        self.edge: ManagedProcess | None = None

    @property
    def processes(self) -> list[ManagedProcess]:
        return [p for p in [*self.engines, self.router, self.edge] if p is not None]

    def _log(self, name: str) -> Path | None:
        return self.plan.log_dir / f"{name}.log" if self.plan.log_dir else None

    def start_engine(self, port: int, extra: list[str] | None = None) -> ManagedProcess:
        plan = self.plan
        engine = ManagedProcess(
            f"engine:{port}",
            [
                "-m",
                "services.engine",
                "--host",
                plan.host,
                "--port",
                str(port),
                *plan.engine_args,
                *(extra or []),
            ],
            env=plan.env,
            log_path=self._log(f"engine-{port}"),
        ).start()
        self.engines.append(engine)
        return engine

    def start(self, timeout_s: float = 600) -> Stack:
        plan = self.plan
        try:
            for i, port in enumerate(plan.engine_ports):
                extra = plan.per_engine_args[i] if i < len(plan.per_engine_args) else []
                self.start_engine(port, extra)
            replicas = [a for p in plan.engine_ports for a in ("--replica", f"{plan.host}:{p}")]
            self.router = ManagedProcess(
                "router",
                [
                    "-m",
                    "services.router",
                    "--host",
                    plan.host,
                    "--port",
                    str(plan.router_port),
                    *replicas,
                    *plan.router_args,
                ],
                env=plan.env,
                log_path=self._log("router"),
            ).start()
            self.edge = ManagedProcess(
                "edge",
                [
                    "-m",
                    "services.edge",
                    "--host",
                    plan.host,
                    "--port",
                    str(plan.edge_port),
                    "--router",
                    f"{plan.host}:{plan.router_port}",
                    *plan.edge_args,
                ],
                env={**plan.env, **plan.edge_env},
                log_path=self._log("edge"),
            ).start()
            # Every replica, not just one per model: callers (and tests) may rely on
            # the whole fleet being there.
            addresses = [f"{plan.host}:{port}" for port in plan.engine_ports]
            router = f"{plan.host}:{plan.router_port}"
            for check, what in (
                (lambda: all(grpc_serving(a) for a in addresses), "every engine to serve"),
                (
                    lambda: router_lists_models(router, plan.model_ids),
                    f"the router to serve {', '.join(plan.model_ids)}",
                ),
                (
                    lambda: router_has_replicas(router, len(addresses)),
                    f"the router to have all {len(addresses)} replicas in rotation",
                ),
                (lambda: http_healthy(plan.base_url), f"the edge at {plan.base_url}"),
            ):
                wait_until(
                    check, timeout_s=timeout_s, interval_s=0.5, watch=self.processes, what=what
                )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        # Front to back: stop taking requests first, then let engines drain.
        for process in reversed(self.processes):
            process.stop()

    def dead(self) -> list[ManagedProcess]:
        return [p for p in self.processes if not p.alive()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tera run", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="edge HTTP port")
    p.add_argument("--router-port", type=int, default=50051)
    p.add_argument(
        "--engine-port",
        type=int,
        default=50061,
        help="first engine port; replicas take the following ones",
    )
    p.add_argument("--replicas", type=int, default=1, help="engine replicas of the model")
    p.add_argument("--model-dir", type=Path, help="a local Hugging Face model folder")
    p.add_argument("--model-id", default=DEFAULT_MODEL_ID, help="name clients use")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache"))
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (faster decode, slower first start)",
    )
    p.add_argument(
        "--no-speech",
        action="store_true",
        help=f"do not start the speech engine ({SPEECH_MODEL_ID})",
    )
    p.add_argument(
        "--catalog",
        type=Path,
        help="start the models of this catalog (replicas, parsers, options) "
        "and serve its aliases and keys",
    )
    return p


def plan_from_catalog(args: argparse.Namespace) -> StackPlan:
    """One engine process per replica of each catalog model, on consecutive ports."""
    catalog = load_catalog(args.catalog, check_parsers=True)
    plan = StackPlan(
        host=args.host,
        edge_port=args.port,
        router_port=args.router_port,
        engine_ports=[],
        model_ids=[],
        edge_args=["--catalog", str(args.catalog)],
    )
    port = args.engine_port
    base = args.catalog.parent
    for model in catalog.models:
        for _ in range(model.serving.replicas):
            plan.engine_ports.append(port)
            plan.per_engine_args.append(_engine_args(model, base, args.cache_dir))
            port += 1
        if model.serving.replicas:
            plan.model_ids.append(model.id)
    return plan


def _engine_args(model: ModelEntry, base: Path, cache_dir: Path) -> list[str]:
    if model.kind == "speech":
        return speech_engine_args(model.id)
    weights = (
        model.weights
        if model.weights is None or model.weights.is_absolute()
        else base / model.weights
    )
    if weights is None:
        weights = prepare_default_model(default_model_dir(cache_dir))
    options = {"enforce_eager": True, **model.engine}
    if model.context_length:
        options["max_model_len"] = model.context_length
    args = [
        "--model-id",
        model.id,
        "--model-dir",
        str(weights),
        "--cache-dir",
        str(cache_dir),
        "--vllm",
        json.dumps(options),
    ]
    for flag, value in (
        ("--tool-call-parser", model.tool_call_parser),
        ("--reasoning-parser", model.reasoning_parser),
        ("--chat-template", model.chat_template),
    ):
        if value is not None:
            args += [flag, str(value)]
    return args


def _add_speech_engine(plan: StackPlan, port: int) -> None:
    """One more engine, hosting Piper, behind the same router."""
    plan.per_engine_args += [[]] * (len(plan.engine_ports) - len(plan.per_engine_args))
    plan.engine_ports.append(port)
    plan.per_engine_args.append(speech_engine_args())
    plan.model_ids.append(SPEECH_MODEL_ID)


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    if args.catalog is not None:
        try:
            plan = plan_from_catalog(args)
        except (CatalogError, OSError) as exc:
            raise SystemExit(f"[tera] the catalog cannot be used:\n{exc}") from None
        _run(plan, started)
        return
    model_dir = args.model_dir or prepare_default_model(default_model_dir(args.cache_dir))
    plan = StackPlan(
        host=args.host,
        edge_port=args.port,
        router_port=args.router_port,
        engine_ports=[args.engine_port + i for i in range(args.replicas)],
        engine_args=vllm_engine_args(
            model_dir, args.cache_dir, model_id=args.model_id, eager=not args.compile
        ),
        model_ids=[args.model_id],
    )
    if not args.no_speech:
        _add_speech_engine(plan, args.engine_port + args.replicas)
    _run(plan, started)


def _run(plan: StackPlan, started: float) -> None:
    """Starts the stack, prints how to use it, and supervises it until a signal."""
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    stack = Stack(plan)
    try:
        engines = len(plan.engine_ports)
        print(f"[tera] starting {engines} engine(s), router and edge ...", flush=True)
        stack.start()
        _print_banner(plan, time.monotonic() - started)
        while not stack.dead():
            time.sleep(0.5)
        dead = ", ".join(p.name for p in stack.dead())
        print(f"[tera] {dead} exited; stopping the rest", file=sys.stderr, flush=True)
        raise SystemExit(1)
    except _Stop:
        print("\n[tera] stopping ...", flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        print("[tera] stopped", flush=True)


def _print_banner(plan: StackPlan, seconds: float) -> None:
    model = plan.model_ids[0]
    speech = ""
    if SPEECH_MODEL_ID in plan.model_ids:
        speech = f"""
  curl {plan.base_url}/audio/speech -H 'Content-Type: application/json' \\
    -d '{{"model": "{SPEECH_MODEL_ID}", "input": "Hello from Tera.", "voice": "alloy"}}' \\
    -o hello.mp3
"""
    print(
        f"""
[tera] ready in {seconds:.0f} s. OpenAI API: {plan.base_url}

  curl {plan.base_url}/chat/completions \\
    -H 'Content-Type: application/json' -H 'Authorization: Bearer sk-tera-local' \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'
{speech}
  Python: OpenAI(base_url="{plan.base_url}", api_key="sk-tera-local")
  Ctrl-C stops everything.
""",
        flush=True,
    )


if __name__ == "__main__":
    main()
