"""Part: fair sharing under overload. Two stand-in engines taking two streams each at 20
tokens/s (10-token answers: ~8 requests/s in all), a router without its fair queue, with
it, with one slot kept for interactive requests, with preemption across classes only (a
waiting request takes a lower class's slot, the preempted stream resumes later), and
with fair-share preemption within a class as well; an edge whose catalog names the
tenants. Each setting names the switches it turns off, so each row measures one
mechanism.

Per setting and pair of tenants: the protected tenant's TTFT p50/p99 in a reference run
(both tenants steady at one request every 0.3 s) and with the other tenant flooding
(20 closed loops, about 10x), their p99 ratio, what the protected tenant had refused,
the flooder's throughput and sheds, and the fleet's use: output tokens/s in the flood
(both tenants) over the flood alone (the flooder alone, the same window).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.common import percentile
from devstack.engine_args import scripted_engine_args
from devstack.processes import free_port
from devstack.stack import Stack, StackPlan
from tests.conftest import SCRIPTED_MODEL
from tests.faults.fair_load import TenantLoad, flood, steady


@dataclass(frozen=True)
class Load:
    """What each pair of tenants sends: answers of `tokens`, a steady request every
    `every_s`, a flood of `workers` closed loops for `seconds`."""

    model: str = SCRIPTED_MODEL
    tokens: int = 10
    seconds: float = 6.0
    every_s: float = 0.3
    workers: int = 20


STAND_IN = Load()
KEYS = {
    "quiet": {},
    "noisy": {},
    "inter": {"priority": "interactive"},
    "bulk": {"priority": "batch"},
}
NO_PREEMPTION = "fair queue"
CLASS_PREEMPTION = "fair queue, preemption across classes"
PREEMPTION = "fair queue, preemption + fair share"
SETTINGS = {
    "no queue (429 at once)": {"queue_size": 0},
    NO_PREEMPTION: {"queue_size": 64, "preempt": False},
    "fair queue, 1 interactive slot": {
        "queue_size": 64,
        "interactive_headroom": 1,
        "preempt": False,
    },
    CLASS_PREEMPTION: {"queue_size": 64, "preempt": True, "preempt_for_share": False},
    PREEMPTION: {"queue_size": 64, "preempt": True},
    # What share_min_run_s (0 by default) would cost the quiet tenant, and buy the fleet.
    **{
        f"{PREEMPTION}, min run {s} s": {"queue_size": 64, "share_min_run_s": s} for s in (0.2, 0.5)
    },
}
RAMP_UP_S = 1.0  # of the flood, left out of the fleet's output
PAIRS = {
    "quiet vs noisy (equal weights)": ("quiet", "noisy"),
    "interactive vs batch": ("inter", "bulk"),
}


def run(results: Path) -> list[dict]:
    rows = []
    for i, (setting, fair) in enumerate(SETTINGS.items()):
        plan = _plan(results / f"fairness-{i}", fair)
        stack = Stack(plan).start(timeout_s=60)
        try:
            rows += [{"setting": setting, **row} for row in pairs(plan.base_url)]
        finally:
            stack.stop()
    return rows


def pairs(base: str, load: Load = STAND_IN) -> Iterator[dict]:
    """Every pair of tenants through one stack, one after the other: each row is
    yielded as its run ends (so the caller can read the router's counters between)."""
    for pair, (protected, other) in PAIRS.items():
        yield {"tenants": pair, **asyncio.run(_pair(base, protected, other, load))}


async def _pair(base: str, protected: str, other: str, load: Load) -> dict:
    ref, _ = await asyncio.gather(
        _steady(base, protected, load, load.seconds / 2),
        _steady(base, other, load, load.seconds / 2),
    )
    alone_from = time.monotonic()
    alone = await _flood(base, other, load)
    flood_from = time.monotonic()
    noisy = asyncio.create_task(_flood(base, other, load))
    await asyncio.sleep(0.5)
    quiet = await _steady(base, protected, load, load.seconds - 1)
    flooder = await noisy
    in_flood = _tokens_per_s([flooder, quiet], flood_from, load)
    flood_only = _tokens_per_s([alone], alone_from, load)
    return {
        "ref_p50_ttft_ms": _ms(ref, 50),
        "ref_p99_ttft_ms": _ms(ref, 99),
        "flood_p50_ttft_ms": _ms(quiet, 50),
        "flood_p99_ttft_ms": _ms(quiet, 99),
        "p99_ratio": round(_ms(quiet, 99) / max(_ms(ref, 99), 1e-3), 1),
        "protected_refused": len(quiet.results) - len(quiet.ok),
        "flooder_req_per_s": round(len(flooder.ok) / load.seconds, 1),
        "flooder_shed": len(flooder.shed),
        "flood_tok_per_s": round(in_flood, 1),
        "flood_only_tok_per_s": round(flood_only, 1),
        "utilisation": round(in_flood / max(flood_only, 1e-3), 3),
    }


async def _flood(base: str, tenant: str, load: Load) -> TenantLoad:
    return await flood(
        base,
        f"sk-{tenant}",
        workers=load.workers,
        seconds=load.seconds,
        max_tokens=load.tokens,
        model=load.model,
    )


async def _steady(base: str, tenant: str, load: Load, seconds: float) -> TenantLoad:
    return await steady(
        base,
        f"sk-{tenant}",
        every_s=load.every_s,
        seconds=seconds,
        max_tokens=load.tokens,
        model=load.model,
    )


def _tokens_per_s(loads: list[TenantLoad], start: float, load: Load) -> float:
    """Output tokens/s of the answers that ended in the flood's window, each counted as
    load.tokens (the stand-in always runs to max_tokens; vLLM may stop sooner)."""
    begin, end = start + RAMP_UP_S, start + load.seconds
    served = sum(tenant.served_between(begin, end) for tenant in loads)
    return served * load.tokens / (end - begin)


def preemption_ratios(rows: list[dict], off_setting: str = NO_PREEMPTION) -> list[dict]:
    """Per pair, the protected tenant's TTFT in the flood with preemption off (or only
    across classes: `off_setting`) and on, off / on (how many times shorter preemption
    makes its wait; same run, same fleet), on against its reference p99 (the target:
    within 1.5x) and the fleet's use with it on (the target: at least 0.95x)."""
    by = {(r["setting"], r["tenants"]): r for r in rows}
    ratios = []
    for pair in PAIRS:
        off, on = by.get((off_setting, pair)), by.get((PREEMPTION, pair))
        if off is None or on is None:
            continue
        row: dict = {"tenants": pair, "off": off_setting, "on_utilisation": on["utilisation"]}
        row["on_p99_over_ref"] = on["p99_ratio"]
        for q in ("p50", "p99"):
            key = f"flood_{q}_ttft_ms"
            row |= {f"off_{q}_ms": off[key], f"on_{q}_ms": on[key]}
            row[f"{q}_off_over_on"] = round(off[key] / max(on[key], 1e-3), 1)
        ratios.append(row)
    return ratios


def _ms(load: TenantLoad, q: float) -> float:
    ttfts = load.ttfts()
    return round(percentile(ttfts, q) * 1000, 1) if ttfts else float("nan")


def write_router_config(router: Path, fair: dict, extra: tuple[str, ...] = ()) -> list[str]:
    """The router's config (no hedging, fast load polls, `fair`) and its arguments
    (`extra` after --config)."""
    config = {"hedge": {"enabled": False}, "health": {"load_poll_interval_s": 0.2}, "fair": fair}
    router.write_text(yaml.safe_dump(config))
    return ["--config", str(router), *extra]


def write_catalog(catalog: Path, model: str) -> list[str]:
    """The edge's catalog naming the tenants (KEYS), and its arguments."""
    keys = [{"name": n, "key": f"sk-{n}", **extra} for n, extra in KEYS.items()]
    catalog.write_text(yaml.safe_dump({"models": [{"id": model}], "keys": keys}))
    return ["--catalog", str(catalog)]


def _plan(logs: Path, fair: dict) -> StackPlan:
    logs.mkdir(parents=True, exist_ok=True)
    engine = [*scripted_engine_args(SCRIPTED_MODEL, tokens_per_second=20), "--max-in-flight", "2"]
    return StackPlan(
        edge_port=free_port(),
        router_port=free_port(),
        engine_ports=[free_port(), free_port()],
        per_engine_args=[engine, engine],
        model_ids=[SCRIPTED_MODEL],
        router_args=write_router_config(logs / "router.yaml", fair),
        edge_args=write_catalog(logs / "catalog.yaml", SCRIPTED_MODEL),
        log_dir=logs,
    )
