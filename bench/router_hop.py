"""Part: what the router's hop costs a first token at concurrency 1, the upper bound on
what taking it off the path (a router inside the edge's process) could save.

Two stand-in stacks side by side (bench/side_by_side.py): one as shipped (edge → router
→ engine) and one whose edge is pointed at the engine itself (`--router` at the engine's
address: the engine serves the same Generate and stream link the router does), so its
requests skip the router; that stack's router still runs, idle, so both stacks have the
same processes on the CPUs. What the direct stack skips is the whole hop: two socket
writes and process wake-ups each way, and the router's own work per stream (queue,
policy, journal, attempt), none of which the direct stack can do without.

    python -m bench.run --parts router_hop
"""

from __future__ import annotations

from pathlib import Path

from bench.common import STAND_IN_MODEL
from bench.side_by_side import BEHAVIOUR, compare
from devstack.engine_args import scripted_engine_args
from devstack.processes import free_port
from devstack.stack import Stack, StackPlan

DIRECT, VIA_ROUTER = "edge → engine", "edge → router → engine (shipped)"


def plan(results: Path, *, direct: bool) -> StackPlan:
    """A stand-in stack's plan; `direct`: its edge calls the engine, not the router."""
    engine = free_port()
    return StackPlan(
        edge_port=free_port(),
        router_port=free_port(),
        engine_ports=[engine],
        engine_args=scripted_engine_args(STAND_IN_MODEL, **BEHAVIOUR),
        model_ids=[STAND_IN_MODEL],
        edge_args=["--router", f"127.0.0.1:{engine}"] if direct else [],
        log_dir=results,
    )


def run(results: Path, rounds: int = 3, requests: int = 300, gap_s: float = 0.01) -> list[dict]:
    """One row a round: each stack's client first-token p50/p90 (ms), and the difference."""
    start = {
        DIRECT: lambda: Stack(plan(results, direct=True)).start(timeout_s=60),
        VIA_ROUTER: lambda: Stack(plan(results, direct=False)).start(timeout_s=60),
    }
    return compare(start, rounds=rounds, requests=requests, gap_s=gap_s)
