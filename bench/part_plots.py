"""PNG plots for the stand-in parts of a benchmark report (bench/plots.py draws the
vLLM comparison and relay ones and calls these): cache-aware policies side by side, the
resume gap, hedging by setting, fairness with and without the queue. Each reads only its
part's entry in report.json and returns False, drawing nothing, when the part did not run.

Report shapes read here (as the parts store them):
- cache_routing: {variant: [{policy, ttft_p50_ms, ttft_p90_ms, ttft_p99_ms, cached_ratio,
  output_tok_s, shares: [requests per replica]}]} (bench/cache_routing.py)
- resume: {resume_gap_p50_ms, resume_gap_p99_ms, resume_gaps_ms: [every resume's stall]}
  (bench/resume.py; reports from before resume_gaps_ms get the two lines only)
- hedging: [{setting, p50_ttft_ms, p99_ttft_ms, hedges_per_request}] (bench/hedging.py)
- fairness: [{setting, tenants, ref_p50_ttft_ms, ref_p99_ttft_ms, flood_p50_ttft_ms,
  flood_p99_ttft_ms, protected_refused}] (bench/fairness.py, branch r-fair)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
import numpy as np

Draw = Callable[[Path, dict], bool]


def save(fig: plt.Figure, path: Path) -> bool:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _bars(ax: plt.Axes, labels: list[str], series: dict[str, list[float]]) -> None:
    """Grouped bars: one group per label, one bar per series."""
    x = np.arange(len(labels))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize="small")
    ax.grid(alpha=0.3, axis="y")


def cache_routing(results: Path, report: dict) -> bool:
    variants = report.get("cache_routing") or {}
    if not variants:
        return False
    fig, axes = plt.subplots(len(variants), 4, figsize=(20, 4.5 * len(variants)), squeeze=False)
    for row, (variant, rows) in zip(axes, variants.items(), strict=True):
        _cache_variant(row, variant, rows)
    return save(fig, results / "cache_routing.png")


def _cache_variant(axes: np.ndarray, variant: str, rows: list[dict]) -> None:
    policies = [r["policy"] for r in rows]
    ttft, cached, tok_s, shares = axes
    _bars(ttft, policies, {f"p{q}": [r[f"ttft_p{q}_ms"] for r in rows] for q in (50, 90, 99)})
    ttft.set(title=f"{variant}: TTFT", ylabel="ms")
    ttft.legend(fontsize="small")
    _bars(cached, policies, {"cached": [r["cached_ratio"] for r in rows]})
    cached.set(title=f"{variant}: cached prompt tokens", ylabel="share of prompt tokens")
    cached.set_ylim(0, 1)
    _bars(tok_s, policies, {"tok/s": [r["output_tok_s"] for r in rows]})
    tok_s.set(title=f"{variant}: output throughput", ylabel="tokens/s")
    _replica_shares(shares, policies, [r["shares"] for r in rows])
    shares.set(title=f"{variant}: requests per replica", ylabel="share of requests")


def _replica_shares(ax: plt.Axes, policies: list[str], shares: list[list[int]]) -> None:
    """Stacked bars: each policy's requests split by replica (even split: equal slices)."""
    fractions = np.array([np.array(s) / max(sum(s), 1) for s in shares])
    bottom = np.zeros(len(policies))
    for replica, column in enumerate(fractions.T):
        ax.bar(policies, column, 0.6, bottom=bottom, label=f"replica {replica}")
        bottom += column
    ax.tick_params(axis="x", labelrotation=20, labelsize="small")
    ax.set_ylim(0, 1)
    ax.legend(fontsize="small")


def resume(results: Path, report: dict) -> bool:
    result = report.get("resume")
    if not result:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4))
    gaps = np.sort(result.get("resume_gaps_ms", []))
    if len(gaps):
        ax.step(gaps, np.arange(1, len(gaps) + 1) / len(gaps), where="post", label="resumes")
    for q, style in (("p50", "--"), ("p99", ":")):
        value = result[f"resume_gap_{q}_ms"]
        ax.axvline(value, color="grey", linestyle=style, label=f"{q} {value:g} ms")
    ax.set(
        xlabel="stall at a resume, beyond one token interval (ms)",
        ylabel="share of resumes",
        title=f"Mid-stream resume gap ({result.get('resumes', len(gaps))} resumes)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save(fig, results / "resume_gap.png")


def hedging(results: Path, report: dict) -> bool:
    rows = report.get("hedging") or []
    if not rows:
        return False
    settings = [r["setting"] for r in rows]
    fig, (ttft, load) = plt.subplots(1, 2, figsize=(11, 4.5))
    _bars(ttft, settings, {q: [r[f"{q}_ttft_ms"] for r in rows] for q in ("p50", "p99")})
    ttft.set(title="Time to first token by hedge setting", ylabel="ms")
    ttft.legend(fontsize="small")
    _bars(load, settings, {"hedges": [r["hedges_per_request"] for r in rows]})
    load.set(title="Extra load: hedges per request", ylabel="hedges / request")
    return save(fig, results / "hedging.png")


def fairness(results: Path, report: dict) -> bool:
    rows = report.get("fairness") or []
    if not rows:
        return False
    pairs = list(dict.fromkeys(r["tenants"] for r in rows))
    fig, axes = plt.subplots(1, len(pairs), figsize=(7 * len(pairs), 4.5), squeeze=False)
    for ax, pair in zip(axes[0], pairs, strict=True):
        mine = [r for r in rows if r["tenants"] == pair]
        keys = ("ref_p50", "ref_p99", "flood_p50", "flood_p99")
        series = {k.replace("_", " "): [r[f"{k}_ttft_ms"] for r in mine] for k in keys}
        labels = [f"{r['setting']}\n({r['protected_refused']} refused)" for r in mine]
        _bars(ax, labels, series)
        ax.set(title=f"{pair}: protected tenant's TTFT", ylabel="ms", yscale="log")
        ax.legend(fontsize="small")
    return save(fig, results / "fairness.png")


# File name -> (title, drawing function), in the order the report shows them.
PLOTS: dict[str, tuple[str, Draw]] = {
    "cache_routing.png": ("Cache-aware routing: policies side by side", cache_routing),
    "resume_gap.png": ("Mid-stream resume gap, CDF", resume),
    "hedging.png": ("Hedged first tokens by setting", hedging),
    "fairness.png": ("Fair sharing: protected tenant with and without the queue", fairness),
}
