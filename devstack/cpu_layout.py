"""Which CPUs each process of a one-machine stack may use, when vLLM runs on CPU.

vLLM binds its OpenMP threads itself (`VLLM_CPU_OMP_THREADS_BIND=auto`: the first
cores the process may use, less one it leaves to "other processes"). Two things go wrong
when `tera run` starts several processes on one machine:
- every replica picks the same first cores, so two replicas share one core while another
  idles;
- the edge and router wake up per streamed message wherever the OS puts them, often on an
  OpenMP core, which stalls a whole decode step (the waterfall bench's contention
  experiment: TTFT p50 at concurrency 32 0.65x with the relay confined to the core vLLM
  leaves free; no difference at concurrency 1).
So each vLLM replica's OpenMP threads get their own cores, and the relay and the rest of
each replica (its serving process, vLLM's scheduler process: devstack/stack.py
`serving_cpus`) the core(s) left over, as vLLM's own server leaves one core to its API
and scheduler processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

OMP_BIND = "VLLM_CPU_OMP_THREADS_BIND"


@dataclass(frozen=True)
class CpuLayout:
    engine_binds: list[str | None]  # VLLM_CPU_OMP_THREADS_BIND per vLLM engine; None: auto
    relay: frozenset[int] | None  # the edge's and router's CPUs; None: unpinned


def plan_cpus(available: list[int], engines: int) -> CpuLayout:
    """With more CPUs than engines, the last CPU goes to the relay and the rest are split
    into contiguous runs, one per engine; with fewer, engines take a CPU each in turn
    (sharing only when they must) and the relay floats."""
    cpus = sorted(available)
    if engines == 0 or len(cpus) < 2:
        return CpuLayout([None] * engines, None)
    if len(cpus) <= engines:
        return CpuLayout([str(cpus[i % len(cpus)]) for i in range(engines)], None)
    *compute, relay = cpus
    share, extra = divmod(len(compute), engines)
    binds, start = [], 0
    for i in range(engines):
        size = share + (1 if i < extra else 0)
        binds.append(",".join(map(str, compute[start : start + size])))
        start += size
    return CpuLayout(binds, frozenset({relay}))


def machine_cpus() -> list[int]:
    """The CPUs this process may run on (a container's cpuset, not the host's count)."""
    return sorted(os.sched_getaffinity(0))
