"""`tera run` / `make run`: the whole gateway on one machine.

Prepares the default model if needed, starts engine replica(s), the router and the edge
as separate processes, waits until the edge lists the model, prints how to call it, then
keeps them alive (a crashed process is restarted, with backoff, up to a crash-loop limit)
and stops everything on Ctrl-C or SIGTERM, leaving no process behind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import time
from pathlib import Path
from types import FrameType

from devstack.banner import print_banner
from devstack.certs import ensure_local_certs
from devstack.cpu_layout import OMP_BIND, machine_cpus, plan_cpus
from devstack.engine_args import (
    SPEECH_MODEL_ID,
    scripted_engine_args,
    speech_engine_args,
    vllm_engine_args,
)
from devstack.stack import Stack, StackPlan
from devstack.supervisor import RestartPolicy, Supervisor
from services.catalog import CatalogError, load_catalog
from services.catalog.engine_args import catalog_engine_args
from services.engine.model_prep import DEFAULT_MODEL_ID, default_model_dir, prepare_default_model
from services.tenancy.keys import keys_from_env


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tera run", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="edge HTTP port")
    p.add_argument(
        "--ops-port",
        type=int,
        default=9400,
        help="edge operations port (/metrics, /admin/*), on 127.0.0.1",
    )
    p.add_argument("--router-port", type=int, default=50051)
    p.add_argument(
        "--engine-port",
        type=int,
        default=50061,
        help="first engine port; replicas take the following ones",
    )
    p.add_argument("--replicas", type=int, default=1, help="engine replicas of the model")
    p.add_argument(
        "--policy", help="the router's routing policy (default: the router's own, cache_aware)"
    )
    p.add_argument(
        "--prefix-names",
        action="store_true",
        help="the edge names prompt prefixes with the model's tokenizer, for cache_aware",
    )
    p.add_argument(
        "--split",
        action="store_true",
        help="run the edge and the router as two processes, as deploy/k8s does (default: "
        "one process, services/gateway, their stream link in memory)",
    )
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
    p.add_argument(
        "--plaintext",
        action="store_true",
        help="no mutual TLS between the services (loopback only); by default a local CA "
        "and certificates are made in CACHE_DIR/tls on first start and used",
    )
    p.add_argument(
        "--cpu-pinning",
        choices=("auto", "off"),
        default="auto",
        help="auto: each vLLM replica's OpenMP threads on their own cores and the edge and "
        "router on the core left over (devstack/cpu_layout.py); off: vLLM's own binding",
    )
    _add_restart_flags(p)
    # Tests and benchmarks: stand-in engines (a JSON ScriptedOptions object for every
    # replica, or a list of one per replica) instead of vLLM, and no speech engine.
    p.add_argument("--stand-in", help=argparse.SUPPRESS)
    p.add_argument("--log-dir", type=Path, help=argparse.SUPPRESS)
    return p


def _add_restart_flags(p: argparse.ArgumentParser) -> None:
    defaults = RestartPolicy()
    p.add_argument(
        "--restart-backoff",
        type=float,
        default=defaults.backoff_s,
        help="seconds before restarting a crashed process; doubles per recent crash "
        f"(up to {defaults.backoff_max_s:.0f} s)",
    )
    p.add_argument(
        "--crash-limit",
        type=int,
        default=defaults.crash_limit,
        help="give up on a process after this many crashes within --crash-window",
    )
    p.add_argument("--crash-window", type=float, default=defaults.crash_window_s, help="seconds")


def _policy(args: argparse.Namespace) -> RestartPolicy:
    return RestartPolicy(
        backoff_s=args.restart_backoff,
        crash_limit=args.crash_limit,
        crash_window_s=args.crash_window,
    )


def responses_db(cache_dir: Path) -> Path:
    """The edge's stored responses, kept across edge restarts (the supervisor restarts a
    crashed edge) and `tera run` runs; a catalog that names Redis takes precedence."""
    return cache_dir / "responses.sqlite3"


def plan_from_catalog(args: argparse.Namespace) -> StackPlan:
    """One engine process per replica of each catalog model, on consecutive ports."""
    catalog = load_catalog(args.catalog, check_parsers=True)
    plan = StackPlan(
        host=args.host,
        edge_port=args.port,
        edge_ops_port=args.ops_port,
        router_port=args.router_port,
        engine_ports=[],
        model_ids=[],
        edge_args=["--catalog", str(args.catalog)],
        responses_db=responses_db(args.cache_dir),
    )
    port = args.engine_port
    base = args.catalog.parent
    vllm_engines: list[int] = []
    for model in catalog.models:
        for _ in range(model.serving.replicas):
            if model.kind != "speech":
                vllm_engines.append(len(plan.engine_ports))
            plan.engine_ports.append(port)
            plan.per_engine_args.append(
                catalog_engine_args(
                    model,
                    base=base,
                    cache_dir=args.cache_dir,
                    default_weights=lambda: prepare_default_model(
                        default_model_dir(args.cache_dir)
                    ),
                )
            )
            port += 1
        if model.serving.replicas:
            plan.model_ids.append(model.id)
    return _pinned(plan, vllm_engines, args)


def _add_speech_engine(plan: StackPlan, port: int) -> None:
    """One more engine, hosting Piper, behind the same router."""
    plan.per_engine_args += [[]] * (len(plan.engine_ports) - len(plan.per_engine_args))
    plan.engine_ports.append(port)
    plan.per_engine_args.append(speech_engine_args())
    plan.model_ids.append(SPEECH_MODEL_ID)


def _stand_in_plan(args: argparse.Namespace) -> StackPlan:
    """Stand-in engines; a replica's behaviour may name its own "model_id"."""
    behaviour = json.loads(args.stand_in)
    listed = behaviour if isinstance(behaviour, list) else [behaviour] * args.replicas
    per_replica = [dict(b) for b in listed]
    models = [b.pop("model_id", args.model_id) for b in per_replica]
    return StackPlan(
        host=args.host,
        edge_port=args.port,
        edge_ops_port=args.ops_port,
        router_port=args.router_port,
        engine_ports=[args.engine_port + i for i in range(len(per_replica))],
        per_engine_args=[
            scripted_engine_args(m, **b) for m, b in zip(models, per_replica, strict=True)
        ],
        model_ids=list(dict.fromkeys(models)),
        log_dir=args.log_dir,
    )


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    plan = _plan(args)
    if args.policy:
        plan.router_args = [*plan.router_args, "--policy", args.policy]
    plan.colocated = not args.split  # one node: the gateway's layout saves a hop
    _run(_secured(plan, args), started, _policy(args))


def _plan(args: argparse.Namespace) -> StackPlan:
    if args.stand_in is not None:
        return _stand_in_plan(args)
    if args.catalog is not None:
        try:
            return plan_from_catalog(args)
        except (CatalogError, OSError) as exc:
            raise SystemExit(f"[tera] the catalog cannot be used:\n{exc}") from None
    model_dir = args.model_dir or prepare_default_model(default_model_dir(args.cache_dir))
    return default_plan(args, model_dir)


def default_plan(args: argparse.Namespace, model_dir: Path) -> StackPlan:
    """The default model on vLLM (and the speech engine unless --no-speech)."""
    plan = StackPlan(
        host=args.host,
        edge_port=args.port,
        edge_ops_port=args.ops_port,
        router_port=args.router_port,
        engine_ports=[args.engine_port + i for i in range(args.replicas)],
        engine_args=vllm_engine_args(
            model_dir, args.cache_dir, model_id=args.model_id, eager=not args.compile
        ),
        model_ids=[args.model_id],
        edge_args=_prefix_names(args, model_dir),
        responses_db=responses_db(args.cache_dir),
    )
    _pinned(plan, list(range(args.replicas)), args)
    if not args.no_speech:
        _add_speech_engine(plan, args.engine_port + args.replicas)
    return plan


def _pinned(plan: StackPlan, vllm_engines: list[int], args: argparse.Namespace) -> StackPlan:
    """Gives the vLLM engines (indices into plan.engine_ports) and the relay their CPUs."""
    if args.cpu_pinning == "off":
        return plan
    layout = plan_cpus(machine_cpus(), len(vllm_engines))
    plan.per_engine_env = [{} for _ in plan.engine_ports]
    for i, bind in zip(vllm_engines, layout.engine_binds, strict=True):
        if bind is not None:
            plan.per_engine_env[i] = {OMP_BIND: bind}
    plan.relay_cpus = layout.relay
    return plan


def _prefix_names(args: argparse.Namespace, model_dir: Path) -> list[str]:
    """Names for the router's cache_aware policy (its default), by the engine's own
    tokenizer; opt-in, as the edge then imports transformers and torch (~10 s, 430 MiB)."""
    return ["--prefix-tokenizer", f"{args.model_id}={model_dir}"] if args.prefix_names else []


def _secured(plan: StackPlan, args: argparse.Namespace) -> StackPlan:
    """Mutual TLS on every gRPC hop unless --plaintext. With it, and API keys configured,
    the router requires callers to be tenants as the edge does: a key, or the edge's
    certificate. Without keys the edge takes anyone on loopback, and so does the router;
    with --plaintext it cannot tell the edge from anyone else, so it stays open."""
    if args.plaintext:
        return plan
    plan.tls_dir = ensure_local_certs(args.cache_dir / "tls")
    keys = args.catalog is not None and load_catalog(args.catalog, check_weights=False).keys
    if keys_from_env() or keys:
        catalog = ["--catalog", str(args.catalog)] if args.catalog is not None else []
        plan.router_args = [*plan.router_args, "--require-auth", *catalog]
    return plan


def _run(plan: StackPlan, started: float, policy: RestartPolicy) -> None:
    """Starts the stack, prints how to use it, and supervises it until a signal."""
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    stack = Stack(plan)
    try:
        engines = len(plan.engine_ports)
        front = "the gateway (router and edge)" if plan.colocated else "router and edge"
        print(f"[tera] starting {engines} engine(s) and {front} ...", flush=True)
        stack.start()
        print_banner(plan, time.monotonic() - started)
        _supervise(Supervisor(stack.processes, policy))
        print("[tera] every process was given up on; exiting", flush=True)
        raise SystemExit(1)
    except _Stop:
        _ignore_stop_signals()  # a second Ctrl-C must not cut the shutdown short
        print("\n[tera] stopping ...", flush=True)
    finally:
        _ignore_stop_signals()
        stack.stop()
        print("[tera] stopped", flush=True)


def _ignore_stop_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _supervise(supervisor: Supervisor) -> None:
    """Until everything is given up on: a child's exit (SIGCHLD, through the signal
    wakeup fd) or a restart falling due wakes the supervisor. Ctrl-C still raises."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    previous = signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes select() only
    try:
        while not supervisor.all_given_up():
            supervisor.check()
            select.select([wake_r], [], [], supervisor.next_wake_s())
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
    finally:
        signal.set_wakeup_fd(previous)
        os.close(wake_r)
        os.close(wake_w)


if __name__ == "__main__":
    main()
