"""PNG plots for a benchmark report, written next to report.md: TTFT CDFs per target,
output throughput by concurrency, and the relay's added latency by offered token rate;
bench/part_plots.py adds those of the stand-in parts (cache routing, resume, hedging,
fairness). Each plot is drawn only when its part ran; write() returns the markdown that
shows them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
import numpy as np

from bench.part_plots import PLOTS as PART_PLOTS
from bench.part_plots import save as _save
from bench.vs_vllm import read_halves, served_ttfts

TARGETS = ("vllm", "tera", "vllm-b")  # vllm-b: the control server, when it ran


def write(results: Path, report: dict) -> list[str]:
    """Draws every plot the report has data for; returns a markdown section showing them."""
    plots: dict[str, tuple[str, Callable[[Path, dict], bool]]] = {
        "ttft_cdf.png": ("Time to first token, CDF per target", _ttft_cdf),
        "throughput.png": ("Output throughput by concurrency", _throughput),
        "relay_added_latency.png": ("Relay: added latency by offered rate", _relay_latency),
        **PART_PLOTS,
    }
    md = []
    for name, (title, draw) in plots.items():
        if draw(results, report):
            md.append(f"### {title}\n\n![{title}]({name})\n")
    return ["## Plots\n", *md] if md else []


def _ttfts(results: Path, target: str, concurrency: int) -> list[float]:
    """Per-request TTFTs (ms) from the `vllm bench serve` detailed results of one cell."""
    return [t * 1000 for t in served_ttfts(read_halves(results, target, concurrency))]


def _ttft_cdf(results: Path, report: dict) -> bool:
    concurrencies = sorted({r["concurrency"] for r in report.get("vs_vllm", [])})
    if not concurrencies:
        return False
    fig, axes = plt.subplots(1, len(concurrencies), figsize=(5 * len(concurrencies), 4))
    for ax, c in zip(np.atleast_1d(axes), concurrencies, strict=True):
        for target in TARGETS:
            ttfts = np.sort(_ttfts(results, target, c))
            if len(ttfts):
                shares = np.arange(1, len(ttfts) + 1) / len(ttfts)
                ax.step(ttfts, shares, where="post", label=target)
        ax.set(title=f"concurrency {c}", xlabel="TTFT (ms)", ylabel="share of requests")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, results / "ttft_cdf.png")


def _throughput(results: Path, report: dict) -> bool:
    rows = [r for r in report.get("vs_vllm", []) if r["target"] in TARGETS]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for target in TARGETS:
        mine = sorted(
            (r["concurrency"], r["output_throughput"]) for r in rows if r["target"] == target
        )
        if mine:
            ax.plot(*zip(*mine, strict=True), marker="o", label=target)
    ax.set(xscale="log", xlabel="concurrency", ylabel="output tokens/s", title="Throughput")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, results / "throughput.png")


def _relay_latency(results: Path, report: dict) -> bool:
    runs = {
        k.removeprefix("relay_coalesce_"): v
        for k, v in report.items()
        if k.startswith("relay_coalesce_")
    }
    if not runs:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for window, result in sorted(runs.items()):
        for streams in sorted({s["streams"] for s in result["steps"]}):
            steps = sorted(
                (s["streams"] * s["rate_per_stream"], s["added_latency_p99_ms"])
                for s in result["steps"]
                if s["streams"] == streams
            )
            ax.plot(*zip(*steps, strict=True), marker="o", label=f"{streams} streams, {window}")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="offered tokens/s (streams x rate per stream)",
        ylabel="added latency per token, p99 (ms)",
        title="Relay added latency (coalescing window in the legend)",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return _save(fig, results / "relay_added_latency.png")
