"""Processes the fault tests start by hand (when Stack's layout does not fit): stand-in
engines on chosen addresses, and a router + edge in front of whatever they are given."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from devstack.engine_args import scripted_engine_args
from devstack.processes import ManagedProcess, free_port, wait_until
from devstack.readiness import edge_lists_models, http_healthy
from devstack.stack import relay_env
from tests.conftest import SCRIPTED_MODEL


def stand_in(
    logs: Path,
    port: int,
    host: str = "127.0.0.1",
    args: Sequence[str] = (),
    **behaviour: object,
) -> ManagedProcess:
    """A stand-in engine on host:port; `args`: more engine flags."""
    return ManagedProcess(
        f"engine@{host}:{port}",
        [
            "-m",
            "services.engine",
            "--host",
            host,
            "--port",
            str(port),
            *scripted_engine_args(SCRIPTED_MODEL, **behaviour),
            *args,
        ],
        log_path=logs / f"engine-{host}-{port}.log",
    ).start()


@contextlib.contextmanager
def gateway(
    logs: Path,
    router_args: list[str],
    *,
    ready_models: list[str] | None = None,
    watch: list[ManagedProcess] | None = None,
    edge_args: list[str] = (),
) -> Iterator[tuple[ManagedProcess, str]]:
    """Starts a router (with router_args) and an edge; yields (router, base URL) once the
    edge is healthy, or lists ready_models; stops both after."""
    router_port, edge_port = free_port(), free_port()
    router = ManagedProcess(
        "router",
        ["-m", "services.router", "--port", str(router_port), *router_args],
        env=relay_env({}),
        log_path=logs / "router.log",
    ).start()
    edge = ManagedProcess(
        "edge",
        [
            *("-m", "services.edge", "--port", str(edge_port)),
            *("--router", f"127.0.0.1:{router_port}", *edge_args),
        ],
        env=relay_env({}),
        log_path=logs / "edge.log",
    ).start()
    base = f"http://127.0.0.1:{edge_port}/v1"
    try:
        if ready_models:
            wait_until(
                lambda: edge_lists_models(base, ready_models),
                timeout_s=60,
                watch=[*(watch or []), router, edge],
                what=f"{ready_models} at the edge",
            )
        else:
            wait_until(
                lambda: http_healthy(base), timeout_s=60, watch=[router, edge], what="the edge"
            )
        yield router, base
    finally:
        edge.stop()
        router.stop()
