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
from pathlib import Path

import yaml

from bench.common import percentile
from devstack.engine_args import scripted_engine_args
from devstack.processes import free_port
from devstack.stack import Stack, StackPlan
from tests.conftest import SCRIPTED_MODEL
from tests.faults.fair_load import TenantLoad, flood, steady

TOKENS = 10
SECONDS = 6.0
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
WINDOW_S = (1.0, SECONDS)  # of the flood, for the fleet's output: past its ramp-up
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
            for pair, (protected, other) in PAIRS.items():
                row = asyncio.run(_pair(plan.base_url, protected, other))
                rows.append({"setting": setting, "tenants": pair, **row})
        finally:
            stack.stop()
    return rows


async def _pair(base: str, protected: str, other: str) -> dict:
    steady_load = {"every_s": 0.3, "seconds": SECONDS / 2, "max_tokens": TOKENS}
    ref, _ = await asyncio.gather(
        steady(base, f"sk-{protected}", **steady_load),
        steady(base, f"sk-{other}", **steady_load),
    )
    alone_from = time.monotonic()
    alone = await _flood(base, other)
    flood_from = time.monotonic()
    noisy = asyncio.create_task(_flood(base, other))
    await asyncio.sleep(0.5)
    quiet = await steady(
        base, f"sk-{protected}", every_s=0.3, seconds=SECONDS - 1, max_tokens=TOKENS
    )
    flooder = await noisy
    in_flood = _tokens_per_s([flooder, quiet], flood_from)
    flood_only = _tokens_per_s([alone], alone_from)
    return {
        "ref_p50_ttft_ms": _ms(ref, 50),
        "ref_p99_ttft_ms": _ms(ref, 99),
        "flood_p50_ttft_ms": _ms(quiet, 50),
        "flood_p99_ttft_ms": _ms(quiet, 99),
        "p99_ratio": round(_ms(quiet, 99) / max(_ms(ref, 99), 1e-3), 1),
        "protected_refused": len(quiet.results) - len(quiet.ok),
        "flooder_req_per_s": round(len(flooder.ok) / SECONDS, 1),
        "flooder_shed": len(flooder.shed),
        "flood_tok_per_s": round(in_flood, 1),
        "flood_only_tok_per_s": round(flood_only, 1),
        "utilisation": round(in_flood / max(flood_only, 1e-3), 3),
    }


async def _flood(base: str, tenant: str) -> TenantLoad:
    return await flood(base, f"sk-{tenant}", workers=20, seconds=SECONDS, max_tokens=TOKENS)


def _tokens_per_s(loads: list[TenantLoad], start: float) -> float:
    """Output tokens/s of the answers that ended in the flood's window (each answer is
    TOKENS long: the stand-in always runs to max_tokens)."""
    begin, end = (start + edge for edge in WINDOW_S)
    served = sum(load.served_between(begin, end) for load in loads)
    return served * TOKENS / (end - begin)


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


def _plan(logs: Path, fair: dict) -> StackPlan:
    logs.mkdir(parents=True, exist_ok=True)
    router = logs / "router.yaml"
    router.write_text(
        yaml.safe_dump(
            {
                "hedge": {"enabled": False},
                "health": {"load_poll_interval_s": 0.2},
                "fair": fair,
            }
        )
    )
    catalog = logs / "catalog.yaml"
    keys = [{"name": n, "key": f"sk-{n}", **extra} for n, extra in KEYS.items()]
    catalog.write_text(yaml.safe_dump({"models": [{"id": SCRIPTED_MODEL}], "keys": keys}))
    engine = [*scripted_engine_args(SCRIPTED_MODEL, tokens_per_second=20), "--max-in-flight", "2"]
    return StackPlan(
        edge_port=free_port(),
        router_port=free_port(),
        engine_ports=[free_port(), free_port()],
        per_engine_args=[engine, engine],
        model_ids=[SCRIPTED_MODEL],
        router_args=["--config", str(router)],
        edge_args=["--catalog", str(catalog)],
        log_dir=logs,
    )
