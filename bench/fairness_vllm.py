"""Part: fair sharing on two real vLLM replicas of the default model (bench/fairness.py's
scenarios and table, scaled to a 2-core machine): each engine runs max_num_seqs
streams and admits as many (its --max-in-flight, the router's view of its capacity), so
queueing shows in the router, not inside vLLM; answers are short.

The engines load once; each setting (the fair queue off, as before it existed; on with
its defaults, preemption and fair share included) gets a fresh router. No target: on
CPU a larger batch slows every step, so the figures stand beside the stand-in's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.common import CACHE_DIR, cpu_placement
from bench.fairness import Load, pairs, write_catalog, write_router_config
from devstack.engine_args import vllm_engine_args
from devstack.processes import free_port
from devstack.stack import Stack, StackPlan
from services.engine.model_prep import DEFAULT_MODEL_ID
from tests.faults.fair_load import burst
from tests.faults.fleet import plan_router_metric

MAX_NUM_SEQS = 4
LOAD = Load(model=DEFAULT_MODEL_ID, tokens=16, seconds=6.0, every_s=0.5, workers=20)
SETTINGS = {
    "no queue (429 at once)": {"queue_size": 0},
    "fair queue, preemption + fair share": {"queue_size": 64},
}
PREEMPTIONS = "tera_router_preemptions_total"


def run(results: Path, model_dir: Path) -> list[dict]:
    logs = results / "fairness-vllm"
    logs.mkdir(parents=True, exist_ok=True)
    config = logs / "router.yaml"
    metrics = ("--metrics-port", str(free_port()))
    router_args = write_router_config(config, {}, metrics)
    plan = _plan(model_dir, logs, router_args)
    stack = Stack(plan).start(timeout_s=600)
    rows = []
    try:
        _warm_up(plan)
        for setting, fair in SETTINGS.items():
            write_router_config(config, fair, metrics)
            stack.restart_router()
            rows += [{"setting": setting, **row} for row in _pairs(plan)]
    finally:
        stack.stop()
    return rows


def _warm_up(plan: StackPlan) -> None:
    """A full batch on each engine first: the first requests after a start are seconds
    slow, which would land in the first setting's reference."""
    slots = MAX_NUM_SEQS * len(plan.engine_ports)
    load = burst(
        plan.base_url, "sk-quiet", requests=slots, max_tokens=LOAD.tokens, model=LOAD.model
    )
    asyncio.run(load)


def _pairs(plan: StackPlan) -> list[dict]:
    """Each pair's row with the preemptions its run caused (the counter is the fresh
    router's, read as each pair ends)."""
    rows, before = [], 0.0
    for row in pairs(plan.base_url, LOAD):
        total = plan_router_metric(plan, PREEMPTIONS)
        rows.append({**row, "preemptions": int(total - before)})
        before = total
    return rows


def _plan(model_dir: Path, logs: Path, router_args: list[str]) -> StackPlan:
    args = vllm_engine_args(model_dir, CACHE_DIR, max_num_seqs=MAX_NUM_SEQS)
    args += ["--max-in-flight", str(MAX_NUM_SEQS)]
    return StackPlan(
        edge_port=free_port(),
        router_port=free_port(),
        engine_ports=[free_port(), free_port()],
        engine_args=args,
        model_ids=[DEFAULT_MODEL_ID],
        router_args=router_args,
        edge_args=write_catalog(logs / "catalog.yaml", DEFAULT_MODEL_ID),
        log_dir=logs,
        **cpu_placement(2),  # as tera run: vLLM alone would put both on core 0
    )
