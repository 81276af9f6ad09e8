"""Several vs_vllm runs read together: what no single run can say.

One ABBA run's Tera/vLLM ratio carries the host's drift during that run. On this 2-CPU
host vLLM's own first and last halves of one run (the same server, minutes apart) land a
median of several per cent apart and up to 22 % (the vllm_halves_apart columns give it
for the runs read), so a ratio of 0.98 or 1.02 from one run says nothing about which
server is faster. Read together, N runs give each concurrency's ratio as a median with a
bootstrap confidence interval, the same at equal engine pace (the ratio with the
engine's own pace under each server taken out), the TTFT p50 and mean differences
likewise (at 32 a median crosses prefill waves where a mean barely moves), and beside
them vLLM's own half-to-half spread over the same runs: what two identical servers give.
Runs made with the control (`--parts vs_vllm_control`) give the same rows for it, a
second vLLM server over the first, and for each run and target whether issue 22's goal
held (goal_rows): the control's tally is how often two identical servers meet it on this
host.

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

# Issue 22's goal, against vLLM's own server: throughput at or above it at every
# concurrency, the first token at concurrency 1 within these bounds, and at 32 a TTFT
# p50 within this share of vLLM's, in three consecutive runs.
GOAL_THROUGHPUT = 1.0
GOAL_C1_P50_MS, GOAL_C1_P99_MS = 2.0, 5.0
GOAL_C32_P50_SHARE = 0.02
GOAL_RUNS = 3
GOAL_CONCURRENCIES = (1, 8, 32)
GOAL_PARTS = ("throughput_all_at_or_above_1", "c1_ttft_p50_and_p99", "c32_ttft_p50_within_2pct")
NOT_RUN = "not run"


@dataclass(frozen=True)
class RunFigures:
    """One run's figures for one target (Tera or the control) at one concurrency."""

    target: str
    concurrency: int
    throughput_ratio: float  # the target over vLLM, all halves pooled
    ttft_p50_delta_ms: float  # the target minus vLLM
    ttft_p99_delta_ms: float
    ttft_p50_delta_share: float  # the p50 difference over vLLM's p50
    ttft_mean_delta_ms: float  # from the halves' own first-token times
    vllm_halves: float  # vLLM's last half's output throughput over its first
    at_equal_pace: float | None = None  # the ratio times the engine-step ratio (if traced)


def read_run(results: Path) -> list[RunFigures]:
    """A vs_vllm run's ratio rows (report.json: Tera's and, if it ran, the control's) and
    each target's halves, two a round (the per-half `vllm bench serve` results beside it)."""
    report = json.loads((results / "report.json").read_text())
    rows = report.get("vs_vllm", [])
    vllm_rows = {r["concurrency"]: r for r in rows if r["target"] == "vllm"}
    return [
        _read_figures(results, row, vllm_rows[row["concurrency"]])
        for row in rows
        if row["target"].endswith("/vllm")
    ]


def _read_figures(results: Path, row: dict, vllm_row: dict) -> RunFigures:
    """One ratio row with its target's and vLLM's halves read back."""
    c, target = row["concurrency"], row["target"].removesuffix("/vllm")
    vllm, other = (read_halves(results, name, c) for name in ("vllm", target))
    if len(vllm) != len(other) or len(vllm) < 2 or len(vllm) % 2:
        raise ValueError(f"{results}: a half's result at concurrency {c} is missing")
    first, last = half_throughput(vllm[0]), half_throughput(vllm[-1])
    if not first:  # its ratio is void too: the run failed, not the servers' noise
        raise ValueError(f"{results}: vLLM's first half at concurrency {c} served nothing")
    return RunFigures(
        target=target,
        concurrency=c,
        throughput_ratio=row["output_throughput"],
        ttft_p50_delta_ms=row["p50_ttft_ms"],
        ttft_p99_delta_ms=row["p99_ttft_ms"],
        ttft_p50_delta_share=row["p50_ttft_ms"] / vllm_row["p50_ttft_ms"],
        ttft_mean_delta_ms=_mean_ttft_ms(other) - _mean_ttft_ms(vllm),
        vllm_halves=last / first,
        at_equal_pace=row.get(PACE_ADJUSTED),
    )


def _mean_ttft_ms(halves: list[dict]) -> float:
    """The mean first token (ms) over the halves' served requests."""
    ttfts = served_ttfts(halves)
    return statistics.fmean(ttfts) * 1000 if ttfts else float("nan")


def pool(figures: list[RunFigures]) -> list[dict]:
    """Per target and concurrency: the ratio's and the TTFT differences' medians with 95 %
    bootstrap intervals, how many runs met parity, and vLLM's own halves' spread."""
    rows = []
    pairs = {(f.target, f.concurrency) for f in figures}
    for target, c in sorted(pairs, key=lambda pair: (*_tera_first(pair[0]), pair[1])):
        at = [f for f in figures if (f.target, f.concurrency) == (target, c)]
        ratios = [f.throughput_ratio for f in at]
        deltas = [f.ttft_p50_delta_ms for f in at]
        mean_deltas = [f.ttft_mean_delta_ms for f in at]
        spreads = [abs(f.vllm_halves - 1) * 100 for f in at]
        ratio_ci, delta_ci, mean_ci = median_ci(ratios), median_ci(deltas), median_ci(mean_deltas)
        paced = [f.at_equal_pace for f in at if f.at_equal_pace is not None]
        rows.append(
            {
                "target": target,
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


def goal_rows(runs: dict[str, list[RunFigures]]) -> list[dict]:
    """Per target and run (in the order given): which of the goal's parts held, and
    whether all did. A run that did not measure every concurrency the goal names cannot
    meet it: the parts it lacks read "not run"."""
    rows = []
    targets = {f.target for figures in runs.values() for f in figures}
    for target in sorted(targets, key=_tera_first):
        for name, figures in runs.items():
            at = {f.concurrency: f for f in figures if f.target == target}
            if at:
                rows.append({"target": target, "run": name, **_goal_parts(at)})
    return rows


def _goal_parts(at: dict[int, RunFigures]) -> dict:
    parts: dict[str, bool | str] = dict.fromkeys(GOAL_PARTS, NOT_RUN)
    if all(c in at for c in GOAL_CONCURRENCIES):
        ratios = (at[c].throughput_ratio for c in GOAL_CONCURRENCIES)
        parts["throughput_all_at_or_above_1"] = all(r >= GOAL_THROUGHPUT for r in ratios)
    if 1 in at:
        first = at[1]
        parts["c1_ttft_p50_and_p99"] = (
            first.ttft_p50_delta_ms <= GOAL_C1_P50_MS and first.ttft_p99_delta_ms <= GOAL_C1_P99_MS
        )
    if 32 in at:
        parts["c32_ttft_p50_within_2pct"] = abs(at[32].ttft_p50_delta_share) <= GOAL_C32_P50_SHARE
    return parts | {"all": all(part is True for part in parts.values())}


def _tera_first(target: str) -> tuple[bool, str]:
    return target != "tera", target


def consecutive_met(rows: list[dict], target: str) -> int:
    """The longest run of consecutive runs in which the target met the whole goal."""
    longest = current = 0
    for row in rows:
        if row["target"] == target:
            current = current + 1 if row["all"] else 0
            longest = max(longest, current)
    return longest


GOAL_COLUMNS = ["target", "run", *GOAL_PARTS, "all"]
COLUMNS = [
    "target",
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
        runs = {results.name: read_run(results) for results in args.runs}
    except (OSError, ValueError, KeyError) as exc:  # json's errors are ValueErrors
        parser.error(f"not a vs_vllm run's results: {exc}")
    figures = [f for run in runs.values() for f in run]
    names = ", ".join(r.name for r in args.runs)
    print(f"## Tera vs vLLM, {len(args.runs)} runs read together ({names})\n")
    print(
        "Throughput over vLLM's and TTFT p50 and mean minus vLLM's (ms), for Tera and, where "
        "the runs had it, the control: medians over the runs with "
        "95 % bootstrap intervals; at_equal_pace: the ratio times the engine-step ratio, "
        "the engine's own pace under each server taken out (median and range); "
        "vllm_halves_apart: how far vLLM's own first and last halves of a run land apart "
        "(%), what two identical servers give on this host.\n"
    )
    print(table(pool(figures), COLUMNS))
    _print_goal(goal_rows(runs))


def _print_goal(goals: list[dict]) -> None:
    print(
        f"\n## Issue 22's goal, run by run\n\nThroughput at or above vLLM's at every "
        f"concurrency; at 1 TTFT p50 within +{GOAL_C1_P50_MS:g} ms and p99 within "
        f"+{GOAL_C1_P99_MS:g} ms; at 32 TTFT p50 within {GOAL_C32_P50_SHARE:.0%}. The control "
        "(vllm-b), vLLM over a second copy of itself, shows how often two identical servers "
        "meet it here.\n"
    )
    print(table(goals, GOAL_COLUMNS))
    for target in dict.fromkeys(row["target"] for row in goals):
        longest = consecutive_met(goals, target)
        verdict = "met" if longest >= GOAL_RUNS else "missed"
        print(f"\n{target}: {longest} consecutive run(s) met it all ({GOAL_RUNS} asked): {verdict}")


if __name__ == "__main__":
    main()
