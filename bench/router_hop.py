"""Part: what the router's hop costs a first token at concurrency 1, and how much of it
the router inside the edge's process (services/gateway) takes off.

Three stand-in stacks side by side (bench/side_by_side.py): edge and router as two
processes (the baseline); the two in one gateway process, its stream link in memory;
and an edge pointed at the engine itself (`--router` at the engine's address: the engine
serves the same Generate and stream link the router does), its router running idle so
that it has the baseline's processes on the CPUs. That last one skips the whole hop, the
router's own work per stream included (queue, policy, journal, attempt), which no real
deployment can do without: it is the upper bound.

    python -m bench.run --parts router_hop
"""

from __future__ import annotations

from pathlib import Path

from bench.common import STAND_IN_MODEL
from bench.side_by_side import BEHAVIOUR, compare
from devstack.engine_args import scripted_engine_args
from devstack.processes import free_port
from devstack.stack import Stack, StackPlan

DIRECT, COLOCATED, VIA_ROUTER = "edge → engine", "gateway → engine", "edge → router → engine"
ARMS = (DIRECT, COLOCATED, VIA_ROUTER)


def plan(results: Path, *, direct: bool = False, colocated: bool = False) -> StackPlan:
    """A stand-in stack's plan; `direct`: its edge calls the engine, not the router;
    `colocated`: edge and router in one process (services/gateway)."""
    engine = free_port()
    return StackPlan(
        edge_port=free_port(),
        router_port=free_port(),
        engine_ports=[engine],
        engine_args=scripted_engine_args(STAND_IN_MODEL, **BEHAVIOUR),
        model_ids=[STAND_IN_MODEL],
        edge_args=["--router", f"127.0.0.1:{engine}"] if direct else [],
        log_dir=results,
        colocated=colocated,
    )


def run(results: Path, rounds: int = 3, requests: int = 300, gap_s: float = 0.01) -> list[dict]:
    """One row a round: each stack's client first-token p50/p90 (ms), and what the
    direct edge and the gateway save against the two processes."""
    start = {
        DIRECT: lambda: Stack(plan(results, direct=True)).start(timeout_s=60),
        COLOCATED: lambda: Stack(plan(results, colocated=True)).start(timeout_s=60),
        VIA_ROUTER: lambda: Stack(plan(results)).start(timeout_s=60),
    }
    return compare(start, rounds=rounds, requests=requests, gap_s=gap_s)
