"""Several vs_vllm runs read together: what no single run can say.

One ABBA run's Tera/vLLM ratio carries the host's drift during that run. On this
2-CPU host vLLM's own first and last halves of one run (the same server, minutes apart)
land a median of several per cent apart and up to 22 % (the vllm_halves_apart columns
give it for the runs read), so a ratio of 0.98 or 1.02 from one run says nothing about
which server is faster. Read together, N runs give each concurrency's
ratio as a median with a bootstrap confidence interval, the same at equal engine pace
(the ratio with the engine's own pace under each server taken out), the TTFT p50 and
mean differences likewise (at 32 a median crosses prefill waves where a mean barely
moves), and beside them vLLM's own half-to-half spread over the same runs: what two
identical servers give.

    python -m bench.pooled bench/results/A bench/results/B ...   # markdown on stdout
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from bench.common import median_ci, table
from bench.vs_vllm import PACE_ADJUSTED, half_throughput, read_halves, served_ttfts


@dataclass(frozen=True)
class RunFigures:
    """One run's figures at one concurrency."""

    concurrency: int
    throughput_ratio: float  # Tera over vLLM, both halves pooled
    ttft_p50_delta_ms: float  # Tera minus vLLM
    ttft_mean_delta_ms: float  # Tera minus vLLM, from the halves' own first-token times
    vllm_halves: float  # vLLM's last half's output throughput over its first
    at_equal_pace: float | None = None  # the ratio times the engine-step ratio (if traced)


def read_run(results: Path) -> list[RunFigures]:
    """A vs_vllm run's ratio rows (report.json) and each target's halves, two a round (the
    per-half `vllm bench serve` results beside it)."""
    report = json.loads((results / "report.json").read_text())
    out = []
    for row in report.get("vs_vllm", []):
        if row["target"] != "tera/vllm":
            continue
        c = row["concurrency"]
        vllm, tera = (read_halves(results, target, c) for target in ("vllm", "tera"))
        if len(vllm) != len(tera) or len(vllm) < 2 or len(vllm) % 2:
            raise ValueError(f"{results}: a half's result at concurrency {c} is missing")
        first, last = half_throughput(vllm[0]), half_throughput(vllm[-1])
        if not first:  # its ratio is void too: the run failed, not the servers' noise
            raise ValueError(f"{results}: vLLM's first half at concurrency {c} served nothing")
        mean_delta = _mean_ttft_ms(tera) - _mean_ttft_ms(vllm)
        ratio, delta = row["output_throughput"], row["p50_ttft_ms"]
        pace = row.get(PACE_ADJUSTED)
        out.append(RunFigures(c, ratio, delta, mean_delta, last / first, pace))
    return out


def _mean_ttft_ms(halves: list[dict]) -> float:
    """The mean first token (ms) over the halves' served requests."""
    ttfts = served_ttfts(halves)
    return statistics.fmean(ttfts) * 1000 if ttfts else float("nan")


def pool(figures: list[RunFigures]) -> list[dict]:
    """Per concurrency: the ratio's and the TTFT differences' medians with 95 % bootstrap
    intervals, how many runs met parity, and vLLM's own halves' spread."""
    rows = []
    for c in sorted({f.concurrency for f in figures}):
        at = [f for f in figures if f.concurrency == c]
        ratios = [f.throughput_ratio for f in at]
        deltas = [f.ttft_p50_delta_ms for f in at]
        mean_deltas = [f.ttft_mean_delta_ms for f in at]
        spreads = [abs(f.vllm_halves - 1) * 100 for f in at]
        ratio_ci, delta_ci, mean_ci = median_ci(ratios), median_ci(deltas), median_ci(mean_deltas)
        paced = [f.at_equal_pace for f in at if f.at_equal_pace is not None]
        rows.append(
            {
                "concurrency": c,
                "runs": len(at),
                "throughput_ratio_median": statistics.median(ratios),
                "throughput_ratio_ci95": f"{ratio_ci[0]:.3f} - {ratio_ci[1]:.3f}",
                "runs_at_or_above_1": sum(r >= 1 for r in ratios),
                **_pace_figures(paced),
                "ttft_p50_delta_ms_median": statistics.median(deltas),
                "ttft_p50_delta_ms_ci95": f"{delta_ci[0]:.1f} - {delta_ci[1]:.1f}",
                "ttft_mean_delta_ms_median": statistics.median(mean_deltas),
                "ttft_mean_delta_ms_ci95": f"{mean_ci[0]:.1f} - {mean_ci[1]:.1f}",
                "vllm_halves_apart_pct_median": statistics.median(spreads),
                "vllm_halves_apart_pct_max": max(spreads),
            }
        )
    return rows


def _pace_figures(paced: list[float]) -> dict:
    """The ratios at equal engine pace: their median and range (none if untraced)."""
    if not paced:
        return {}
    return {
        "at_equal_pace_median": statistics.median(paced),
        "at_equal_pace_range": f"{min(paced):.3f} - {max(paced):.3f}",
    }


COLUMNS = [
    "concurrency",
    "runs",
    "throughput_ratio_median",
    "throughput_ratio_ci95",
    "runs_at_or_above_1",
    "at_equal_pace_median",
    "at_equal_pace_range",
    "ttft_p50_delta_ms_median",
    "ttft_p50_delta_ms_ci95",
    "ttft_mean_delta_ms_median",
    "ttft_mean_delta_ms_ci95",
    "vllm_halves_apart_pct_median",
    "vllm_halves_apart_pct_max",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="bench/results/<time> of vs_vllm runs")
    args = parser.parse_args()
    try:
        figures = [f for results in args.runs for f in read_run(results)]
    except (OSError, ValueError, KeyError) as exc:  # json's errors are ValueErrors
        parser.error(f"not a vs_vllm run's results: {exc}")
    names = ", ".join(r.name for r in args.runs)
    print(f"## Tera vs vLLM, {len(args.runs)} runs read together ({names})\n")
    print(
        "Throughput Tera/vLLM and TTFT p50 and mean Tera - vLLM (ms): medians over the runs with "
        "95 % bootstrap intervals; at_equal_pace: the ratio times the engine-step ratio, "
        "the engine's own pace under each server taken out (median and range); "
        "vllm_halves_apart: how far vLLM's own first and last halves of a run land apart "
        "(%), what two identical servers give on this host.\n"
    )
    print(table(pool(figures), COLUMNS))


if __name__ == "__main__":
    main()
