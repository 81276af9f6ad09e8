"""make bench: every figure from one run, same machine, written as markdown and JSON
under bench/results/. Parts can be chosen: python -m bench.run --parts relay,overhead"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench import fairness, hedging, overhead, plots, profile, recovery, relay, speech, vs_vllm
from bench.common import CACHE_DIR, ROOT, table
from services.engine.model_prep import default_model_dir, prepare_default_model

PARTS = ("vs_vllm", "relay", "overhead", "profile", "speech", "hedging", "fairness", "recovery")
# Also available: recovery_vllm (two real vLLM engines; minutes on CPU).


def main() -> None:
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
    args = p.parse_args()
    parts = args.parts.split(",")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = ROOT / "bench" / "results" / stamp
    results.mkdir(parents=True, exist_ok=True)
    report: dict = {"started": stamp}
    md = [f"# Tera benchmark {stamp}\n"]
    if "vs_vllm" in parts:
        model_dir = prepare_default_model(default_model_dir(CACHE_DIR))
        rows = vs_vllm.run(model_dir, results, tuple(map(int, args.concurrency.split(","))))
        report["vs_vllm"] = rows
        md += [
            "## Tera vs vLLM's own server (vllm bench serve, openai-chat, random "
            f"{vs_vllm.INPUT_LEN} in / {vs_vllm.OUTPUT_LEN} out, streaming; per concurrency "
            "vLLM, Tera, Tera, vLLM with seeds 0, 0, 1, 1, each target's halves pooled)\n",
            "Ratio rows: throughput as Tera/vLLM, latencies as Tera minus vLLM (ms).\n",
            table(
                rows,
                [
                    "target",
                    "concurrency",
                    "output_throughput",
                    "request_throughput",
                    "p50_ttft_ms",
                    "p99_ttft_ms",
                    "p50_itl_ms",
                    "p99_itl_ms",
                ],
            ),
            "",
        ]
    if "relay" in parts:
        streams = tuple(map(int, args.streams.split(",")))
        rates = tuple(map(float, args.rates.split(",")))
        for window in sorted({0, args.coalesce_window_ms}):
            result = relay.run(results, streams, rates, window)
            report[f"relay_coalesce_{window}ms"] = result
            md += _relay_section(result, window)
    if "overhead" in parts:
        result = overhead.run(results)
        report["overhead"] = result
        md += [
            f"## Per-hop overhead, p50 over {result['requests']} traced requests (ms)\n",
            table(
                [{"hop": k, "p50_ms": v} for k, v in result["p50_ms"].items()], ["hop", "p50_ms"]
            ),
            "",
        ]
    if "profile" in parts:
        result = profile.run(results)
        report["profile"] = result
        for name, top in result.items():
            md += [
                f"## Profile: {name} (py-spy, self time, {profile.STREAMS} streams x "
                f"{profile.RATE:g} tok/s, window {profile.WINDOW_MS} ms)\n",
                table([{"function": f, "share": s} for f, s in top], ["function", "share"]),
                "",
            ]
    if "speech" in parts:
        result = speech.run(results)
        report["speech"] = result
        md += [
            "## Speech (Piper, mp3, full stack)\n",
            f"{result['characters']} characters: time to first audio byte "
            f"{result['ttfb_ms_p50']:.0f} ms (p50), real-time factor {result['rtf_p50']:.3f}"
            " (synthesis time / audio duration, p50)\n",
        ]
    if "hedging" in parts:
        report["hedging"] = rows = hedging.run(results)
        md += _hedging_section(rows)
    if "fairness" in parts:
        report["fairness"] = rows = fairness.run(results)
        md += _fairness_section(rows)
    md += _recovery_sections(results, report, parts)
    md += plots.write(results, report)  # PNGs next to report.md
    (results / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (results / "report.md").write_text("\n".join(md))
    print("\n".join(md))
    print(f"\nwritten to {results}/report.md and report.json")


def _hedging_section(rows: list[dict]) -> list[str]:
    return [
        f"## Hedged first tokens (2 stand-in replicas, one {hedging.SLOW_FIRST_TOKEN_S:g} s "
        f"late with its first token; {hedging.REQUESTS} requests, "
        f"{hedging.CONCURRENCY} concurrent, {hedging.POLICY})\n",
        table(rows, ["setting", "p50_ttft_ms", "p99_ttft_ms", "hedges_per_request", "hedge_wins"]),
        "",
    ]


def _fairness_section(rows: list[dict]) -> list[str]:
    columns = ["setting", "tenants", "ref_p50_ttft_ms", "ref_p99_ttft_ms", "flood_p50_ttft_ms"]
    columns += ["flood_p99_ttft_ms", "p99_ratio", "protected_refused", "flooder_req_per_s"]
    return [
        "## Fair sharing under overload (2 stand-in replicas x 2 slots, 20 tok/s; the "
        "protected tenant steady at 1 request / 0.3 s, the other steady, then flooding 10x)\n",
        table(rows, [*columns, "flooder_shed"]),
        "",
    ]


def _recovery_sections(results: Path, report: dict, parts: list[str]) -> list[str]:
    md = []
    for part in ("recovery", "recovery_vllm"):
        if part in parts:
            md += _recovery_section(results, report, vllm=part == "recovery_vllm")
    return md


def _recovery_section(results: Path, report: dict, *, vllm: bool) -> list[str]:
    model_dir = prepare_default_model(default_model_dir(CACHE_DIR)) if vllm else None
    engine_args = ["--model-dir", str(model_dir)] if model_dir else None
    result = recovery.run(results, crashes=2 if vllm else 3, engine_args=engine_args)
    report[f"recovery_{result['engine']}"] = result
    seconds = ", ".join(f"{s:.2f}" for s in result["back_in_rotation_s"])
    return [
        f"## Crash recovery under tera run ({result['engine']} engine, 2 replicas)\n",
        f"SIGKILL of one engine to its return to rotation, successive crashes (the restart "
        f"backoff doubles per crash within a minute: 1 s, 2 s, 4 s): {seconds} s\n",
    ]


def _relay_section(result: dict, window: int) -> list[str]:
    rows = [
        step | {f"{name} cores": cores for name, cores in step["cores"].items()}
        for step in result["steps"]
    ]
    best = ", ".join(
        f"{n} streams: {b['tokens_per_s']:.0f} tok/s (p99 added ITL {b['added_itl_p99_ms']:.1f} ms)"
        for n, b in result["best"].items()
    )
    return [
        f"## Relay capacity (stand-in engine, {relay.STEP_MS:g} ms decode step, "
        f"coalescing window {window} ms)\n",
        "Added ITL: gap between SSE chunks at the client minus the gap between the "
        "emissions of their newest tokens. Added latency: arrival minus emission, per "
        "token. CPU per 1k tokens in seconds.\n",
        table(
            rows,
            [
                "streams",
                "rate_per_stream",
                "tokens_per_s",
                "added_itl_p50_ms",
                "added_itl_p99_ms",
                "added_latency_p50_ms",
                "added_latency_p99_ms",
                "edge_cpu_per_1k",
                "router_cpu_per_1k",
                "edge cores",
                "router cores",
                "engine cores",
                "load generator cores",
                "errors",
            ],
        ),
        f"\nBest passing step (p99 added ITL <= {relay.ADDED_ITL_LIMIT_MS:g} ms, no errors): "
        + (best or "none"),
        f"\nShort requests (1 token, not streamed, 64 concurrent): "
        f"{result['short_requests_per_s']:.0f} req/s\n",
    ]


if __name__ == "__main__":
    main()
