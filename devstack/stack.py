"""A whole gateway on one machine: engine(s), router and edge as supervised processes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from devstack.cpu_layout import OMP_BIND
from devstack.processes import ManagedProcess, wait_until
from devstack.readiness import (
    client_tls,
    grpc_serving,
    http_healthy,
    router_has_replicas,
    router_lists_models,
)
from services.common.grpc_options import RELAY_GRPC_EXPERIMENTS
from services.common.tls import TLSConfig
from services.engine.model_prep import DEFAULT_MODEL_ID

# Engines and router offer a GenerateMux stream listener on any free port, which they
# advertise in GetLoad; the edge's and router's default transport (stream) links there.
# Before a stack's own args, which may override it.
STREAM_LISTENER = ("--mux-stream-port", "0")


def relay_env(env: dict[str, str]) -> dict[str, str]:
    """An edge's or a router's environment, `env` added: gRPC's polling I/O unless this
    process's environment or `env` names other experiments (grpc_options.py)."""
    experiments = os.environ.get("GRPC_EXPERIMENTS", RELAY_GRPC_EXPERIMENTS)
    return {"GRPC_EXPERIMENTS": experiments, **env}


@dataclass
class StackPlan:
    """What to run where. Tests build plans with free ports and scripted engines."""

    host: str = "127.0.0.1"
    edge_port: int = 8000
    # The edge's operations port (/metrics, /admin/*); None: not served.
    edge_ops_port: int | None = None
    router_port: int = 50051
    engine_ports: list[int] = field(default_factory=lambda: [50061])
    engine_args: list[str] = field(default_factory=list)
    # Extra arguments for engine i (e.g. a different scripted behaviour per replica).
    per_engine_args: list[list[str]] = field(default_factory=list)
    # Extra environment for engine i (e.g. its OpenMP CPUs: devstack/cpu_layout.py).
    per_engine_env: list[dict[str, str]] = field(default_factory=list)
    model_ids: list[str] = field(default_factory=lambda: [DEFAULT_MODEL_ID])
    router_args: list[str] = field(default_factory=list)
    edge_args: list[str] = field(default_factory=list)
    edge_env: dict[str, str] = field(default_factory=dict)
    # The edge's SQLite file for stored responses (None: memory, lost on a restart).
    responses_db: Path | None = None
    # Environment for every process (e.g. OTEL_* settings).
    env: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    # Mutual TLS on every gRPC hop: a devstack.certs folder (edge/, router/, engine/).
    # None: plaintext, which the services allow on loopback only.
    tls_dir: Path | None = None
    # CPUs the relay (edge and router) is confined to, and with them every vLLM engine's
    # serving processes (`serving_cpus`); None: wherever the OS puts them. Keeps them off
    # vLLM's OpenMP cores (the waterfall bench's contention experiment).
    relay_cpus: frozenset[int] | None = None
    # The router inside the edge's process (services/gateway): one process, `router` None.
    colocated: bool = False

    def engine_env(self, port: int) -> dict[str, str]:
        i = self.engine_ports.index(port)
        return {**self.env, **(self.per_engine_env[i] if i < len(self.per_engine_env) else {})}

    def serving_cpus(self, engine_env: dict[str, str]) -> frozenset[int] | None:
        """Where an engine runs all but its OpenMP threads (gRPC serving, output
        processing, vLLM's scheduler process): with its OpenMP threads bound to their
        cores, on the relay's CPUs, off those cores, as vLLM's own server reserves a core
        for its API and scheduler processes; the OpenMP threads still bind to theirs."""
        return self.relay_cpus if OMP_BIND in engine_env else None

    def tls_args(self, service: str) -> list[str]:
        return ["--tls-dir", str(self.tls_dir / service)] if self.tls_dir else []

    def client_tls(self, service: str) -> TLSConfig | None:
        """What `service` presents as a client (the harness probes with it)."""
        return client_tls(self.tls_dir / service if self.tls_dir else None)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.edge_port}/v1"

    @property
    def ops_url(self) -> str:
        """The edge's operations listener (no /v1): /metrics, /admin/usage."""
        if self.edge_ops_port is None:
            raise ValueError("this stack's edge has no operations port")
        return f"http://{self.host}:{self.edge_ops_port}"


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
        env = plan.engine_env(port)
        engine = ManagedProcess(
            f"engine:{port}",
            [
                "-m",
                "services.engine",
                "--host",
                plan.host,
                "--port",
                str(port),
                *STREAM_LISTENER,
                *plan.engine_args,
                *plan.tls_args("engine"),
                *(extra or []),
            ],
            env=env,
            log_path=self._log(f"engine-{port}"),
            cpus=plan.serving_cpus(env),
        ).start()
        self.engines.append(engine)
        return engine

    def start(self, timeout_s: float = 600) -> Stack:
        try:
            for i, port in enumerate(self.plan.engine_ports):
                extra = self.plan.per_engine_args[i] if i < len(self.plan.per_engine_args) else []
                self.start_engine(port, extra)
            if self.plan.colocated:
                self._start_gateway()
            else:
                self._start_router()
                self._start_edge()
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def restart_router(self, timeout_s: float = 60) -> None:
        """A fresh router on the same port (it rereads its config), engines kept warm:
        what the cache routing bench does between policies instead of reloading vLLM."""
        assert not self.plan.colocated, "a colocated router restarts with its edge"
        if self.router is not None:
            self.router.stop()
        self._start_router()
        self._wait_ready(timeout_s)

    def _start_router(self) -> None:
        plan = self.plan
        self.router = ManagedProcess(
            "router",
            ["-m", "services.router", *self._router_flags()],
            env=relay_env(plan.env),
            log_path=self._log("router"),
            cpus=plan.relay_cpus,
        ).start()

    def _start_edge(self) -> None:
        plan = self.plan
        self.edge = ManagedProcess(
            "edge",
            ["-m", "services.edge", *self._edge_flags()],
            env=relay_env({**plan.env, **plan.edge_env}),
            log_path=self._log("edge"),
            cpus=plan.relay_cpus,
        ).start()

    def _start_gateway(self) -> None:
        """Edge and router in one process, each with the flags its own would have."""
        plan = self.plan
        self.edge = ManagedProcess(
            "gateway",
            ["-m", "services.gateway", *self._edge_flags(), "--", *self._router_flags()],
            env=relay_env({**plan.env, **plan.edge_env}),
            log_path=self._log("gateway"),
            cpus=plan.relay_cpus,
        ).start()

    def _router_flags(self) -> list[str]:
        plan = self.plan
        replicas = [a for p in plan.engine_ports for a in ("--replica", f"{plan.host}:{p}")]
        # The router knows these models before their engines answer: 503 until then.
        known = [a for m in plan.model_ids for a in ("--known-model", m)]
        return [
            "--host",
            plan.host,
            "--port",
            str(plan.router_port),
            *replicas,
            *known,
            *STREAM_LISTENER,
            *plan.tls_args("router"),
            *plan.router_args,
        ]

    def _edge_flags(self) -> list[str]:
        plan = self.plan
        store = ["--responses-db", str(plan.responses_db)] if plan.responses_db else []
        return [
            "--host",
            plan.host,
            "--port",
            str(plan.edge_port),
            "--router",
            f"{plan.host}:{plan.router_port}",
            *store,
            *(["--ops-port", str(plan.edge_ops_port)] if plan.edge_ops_port else []),
            *plan.tls_args("edge"),
            *plan.edge_args,
        ]

    def _wait_ready(self, timeout_s: float) -> None:
        # Every replica, not just one per model: callers (and tests) may rely on the
        # whole fleet being there.
        plan = self.plan
        addresses = [f"{plan.host}:{port}" for port in plan.engine_ports]
        router = f"{plan.host}:{plan.router_port}"
        as_router, as_edge = plan.client_tls("router"), plan.client_tls("edge")
        for check, what in (
            (
                lambda: all(grpc_serving(a, tls=as_router) for a in addresses),
                "every engine to serve",
            ),
            (
                lambda: router_lists_models(router, plan.model_ids, tls=as_edge),
                f"the router to serve {', '.join(plan.model_ids)}",
            ),
            (
                lambda: router_has_replicas(router, len(addresses), tls=as_edge),
                f"the router to have all {len(addresses)} replicas in rotation",
            ),
            (lambda: http_healthy(plan.base_url), f"the edge at {plan.base_url}"),
        ):
            wait_until(check, timeout_s=timeout_s, interval_s=0.5, watch=self.processes, what=what)

    def stop(self) -> None:
        # Front to back: stop taking requests first, then let engines drain.
        for process in reversed(self.processes):
            process.stop()

    def dead(self) -> list[ManagedProcess]:
        return [p for p in self.processes if not p.alive()]
