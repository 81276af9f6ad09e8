"""The edge and the router in one process, for a single-node deployment.

    python -m services.gateway [edge flags] -- [router flags]

Each half is configured and runs exactly as its own process would (`tera edge --help`,
`tera router --help`), on one event loop. What changes is the hop between them: the
edge's stream link to the router joins the router's stream listener in memory
(services/common/mux_stream.py, `connect`), so a stream's frames cross no socket and wake
no other process, which at concurrency 1 is most of what the router's hop costs a first
token (`make bench`, router_hop). Everything else is as with two processes: the router
still serves its gRPC port (other edges, internal gRPC callers, health, metrics) and its
stream listener, and the edge reaches it over gRPC for its model list. Under mutual TLS
the joined link carries the edge certificate's names, as the handshake would have given
them to the router's guard, and only where that handshake would have succeeded.
"""

from __future__ import annotations

import asyncio
import sys

import yaml
from pydantic import ValidationError

from services.catalog import CatalogError

# Imported with the start-up heap (frozen once ready, gc_heap.py), not at the first
# in-memory join: its x509 checks are for the joins only this process makes.
from services.common import tls_handshake  # noqa: F401
from services.common.aio import run
from services.common.logs import setup_logging
from services.common.telemetry import serve_as, setup_tracing_as, shutdown_tracing
from services.edge import app as edge_app
from services.edge import cli as edge_cli
from services.edge.tenancy import setup as edge_setup
from services.router import cli as router_cli
from services.router import server as router_server


def split(argv: list[str]) -> tuple[list[str], list[str]]:
    """(edge flags, router flags), on either side of the first `--`."""
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1 :]


def main(argv: list[str] | None = None) -> None:
    edge_argv, router_argv = split(sys.argv[1:] if argv is None else argv)
    setup_logging("gateway")
    router_args = router_cli.build_parser().parse_args(router_argv)
    try:
        router_config = router_cli.config_from_args(router_args)
        if router_config.mux_stream_port is None:
            router_args.mux_stream_port = 0  # a listener for the edge to join in memory
        edge_args = edge_cli.build_parser().parse_args(edge_argv)
        edge_args.router = edge_args.router or router_config.address
        edge_config = edge_cli.config_from_args(edge_args)
        edge_setup.load(edge_config)
    except (ValidationError, ValueError, OSError, yaml.YAMLError, CatalogError) as exc:
        sys.exit(f"tera gateway: invalid configuration: {exc}")
    # Each half's spans under its own service, as with two processes: a trace reads the
    # same (and bench/waterfall.py times it the same) whichever way they are deployed.
    provider = setup_tracing_as(["tera-edge", "tera-router"])

    async def serve_router(stop: asyncio.Event) -> None:
        serve_as("tera-router")  # this task's context, inherited by all the router starts
        await router_server.serve(lambda: router_cli.config_from_args(router_args), stop)

    async def serve(stop: asyncio.Event) -> None:
        router = asyncio.create_task(serve_router(stop))
        router.add_done_callback(lambda _: stop.set())  # a router that fails ends the edge
        try:
            await edge_app.serve(edge_config, stop, provider)
        finally:
            stop.set()  # the edge stopped (or failed to start): the router goes too
            await router  # its failure, if it failed, is the process's

    try:
        run(serve)
    finally:
        shutdown_tracing(provider)
