"""Shared bench helpers: process CPU time, percentiles, spreads, markdown tables."""

from __future__ import annotations

import contextlib
import math
import os
import random
import resource
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devstack.cpu_layout import OMP_BIND, machine_cpus, plan_cpus
from devstack.engine_args import scripted_engine_args, vllm_engine_args
from devstack.processes import free_port
from devstack.stack import Stack, StackPlan

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / ".cache"
TICKS = os.sysconf("SC_CLK_TCK")


STAND_IN_MODEL = "tera-bench/stand-in"


def stand_in_stack(
    results: Path,
    behaviour: dict,
    *,
    engine_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    responses_db: Path | None = None,
    router_args: Sequence[str] = (),
    edge_args: Sequence[str] = (),
    edge_ops: bool = False,
    colocated: bool = False,
) -> Stack:
    """Edge + router + one stand-in engine (real processes) with the given behaviour;
    `edge_ops`: the edge serves /metrics on an operations port; `colocated`: edge and
    router in one process (services/gateway)."""
    plan = StackPlan(
        edge_port=free_port(),
        edge_ops_port=free_port() if edge_ops else None,
        router_port=free_port(),
        engine_ports=[free_port()],
        engine_args=[*scripted_engine_args(STAND_IN_MODEL, **behaviour), *engine_args],
        model_ids=[STAND_IN_MODEL],
        env=env or {},
        responses_db=responses_db,
        router_args=list(router_args),
        edge_args=list(edge_args),
        log_dir=results,
        colocated=colocated,
    )
    return Stack(plan).start(timeout_s=60)


def vllm_plan(model_dir: Path, results: Path, *, pinned: bool = True, **extra: Any) -> StackPlan:
    """Edge + router + one vLLM engine on the default model (what vLLM's own server is
    compared with), laid out on the CPUs as `tera run` does unless not `pinned`; `extra`
    sets other StackPlan fields (env)."""
    return StackPlan(
        edge_port=free_port(),
        router_port=free_port(),
        engine_ports=[free_port()],
        engine_args=vllm_engine_args(model_dir, CACHE_DIR),
        log_dir=results,
        **(cpu_placement(1) if pinned else {}),
        **extra,
    )


def cpu_placement(engines: int) -> dict[str, Any]:
    """StackPlan fields placing `engines` vLLM engines and the relay as `tera run` does."""
    layout = plan_cpus(machine_cpus(), engines)
    binds = [{OMP_BIND: b} if b is not None else {} for b in layout.engine_binds]
    return {"per_engine_env": binds, "relay_cpus": layout.relay}


def own_cpu_seconds() -> float:
    """This process's user + system CPU, to the microsecond (/proc's ticks are 10 ms)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (and its reaped children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
    return (utime + stime + cutime + cstime) / TICKS


def total_cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU of these processes, skipping any that has exited."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def runnable_wait_seconds(pids: Sequence[int]) -> float:
    """Time these processes' live threads spent runnable but waiting for a CPU (the
    scheduler's run delay, /proc/PID/task/TID/schedstat's second field, in ns); a thread
    that has exited takes its share with it."""
    total_ns = 0
    for pid in pids:
        for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                total_ns += int(stat.read_text().split()[1])
    return total_ns / 1e9


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def median_ci(
    values: Sequence[float], level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median: no assumption about the
    shape of the noise (a shared machine's is skewed: a busy neighbour only slows)."""
    rng = random.Random(seed)  # seeded: the same values give the same report
    medians = [statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples)]
    tail = 100 * (1 - level) / 2
    return percentile(medians, tail), percentile(medians, 100 - tail)


def samples_needed(n: int, ci: tuple[float, float], center: float, half_width: float) -> int:
    """Samples for the CI to be within center +- half_width (a share of center), from one
    of n samples, as a CI narrows with the square root of the sample count."""
    current = (ci[1] - ci[0]) / 2 / center
    return max(1, math.ceil(round(n * (current / half_width) ** 2, 6)))  # float dust


def table(rows: list[dict], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)
