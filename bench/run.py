"""make bench: every figure from one run, same machine, written as markdown and JSON
under bench/results/. Parts can be chosen: python -m bench.run --parts relay,waterfall"""

from __future__ import annotations

import argparse
import json
import time

from bench import plots, sections
from bench.common import ROOT
from devstack.processes import interrupt_on_sigterm

# What a plain `make bench` runs, in this order.
PARTS: dict[str, sections.Part] = {
    "vs_vllm": sections.vs_vllm_part,
    "relay": sections.relay_part,
    "relay_mux": sections.relay_mux_part,
    "gc_pauses": sections.gc_pauses_part,
    "resume": sections.resume_part,
    "resume_cost": sections.resume_cost_part,
    "waterfall": sections.waterfall_part,
    "at_once": sections.at_once_part,
    "router_hop": sections.router_hop_part,
    "profile": sections.profile_part,
    "speech": sections.speech_part,
    "hedging": sections.hedging_part,
    "fairness": sections.fairness_part,
    "recovery": sections.recovery_part,
    "cache_routing": sections.cache_routing_part,
    "stored_responses": sections.stored_responses_part,
}
# Asked for by name only (minutes on CPU): two real vLLM engines crash and come back;
# cache-aware routing and fair sharing on two vLLM engines; the vLLM comparison's control.
EXTRA_PARTS: dict[str, sections.Part] = {
    "recovery_vllm": sections.recovery_vllm_part,
    "cache_routing_vllm": sections.cache_routing_vllm_part,
    "fairness_vllm": sections.fairness_vllm_part,
    # vs_vllm with a second vLLM server as a control: what the comparison gives for two
    # identical servers (half as long again as vs_vllm).
    "vs_vllm_control": sections.vs_vllm_control_part,
}


def main() -> None:
    args = _parser().parse_args()
    interrupt_on_sigterm()  # each part stops its servers in `finally`
    parts = args.parts.split(",")
    unknown = set(parts) - set(PARTS) - set(EXTRA_PARTS)
    if unknown:
        raise SystemExit(f"unknown parts {sorted(unknown)}; choose from {[*PARTS, *EXTRA_PARTS]}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = ROOT / "bench" / "results" / stamp
    results.mkdir(parents=True, exist_ok=True)
    report: dict = {"started": stamp}
    md = [f"# Tera benchmark {stamp}\n"]
    for name, part in {**PARTS, **EXTRA_PARTS}.items():
        if name in parts:
            md += part(args, results, report)
    md += plots.write(results, report)  # PNGs next to report.md
    (results / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (results / "report.md").write_text("\n".join(md))
    print("\n".join(md))
    print(f"\nwritten to {results}/report.md and report.json")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--streams", default="32,64,256")
    p.add_argument(
        "--rates",
        default="100,200,400,800,1600",
        help="per-stream token rates to step through (tokens/s)",
    )
    p.add_argument("--coalesce-window-ms", type=int, default=10)
    p.add_argument(
        "--engine-transport",
        choices=["per_call", "mux", "stream"],
        default="stream",
        help="the router's engine_transport in the relay part",
    )
    p.add_argument(
        "--router-transport",
        choices=["per_call", "mux", "stream"],
        default="stream",
        help="the edge's router_transport in the relay part",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="vs_vllm: ABBA rounds per concurrency (more, shorter rounds share the host's "
        "drift out between the servers more evenly)",
    )
    p.add_argument(
        "--client-anywhere",
        action="store_true",
        help="vs_vllm: `vllm bench serve` wherever the OS puts it (default: on the serving "
        "processes' CPU, off the engine's, for both servers)",
    )
    p.add_argument(
        "--split",
        action="store_true",
        help="vs_vllm: Tera's edge and router as two processes (default: one, "
        "services/gateway, as tera run starts them)",
    )
    return p


if __name__ == "__main__":
    main()
