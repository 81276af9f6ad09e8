"""bench/plots.py (and bench/part_plots.py) draw each plot from the report and the raw
`vllm bench serve` results its part left, and draw nothing for parts that did not run.
The synthetic reports below have the shapes the parts store (see part_plots' docstring)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import plots

PNG = b"\x89PNG\r\n\x1a\n"
POLICIES = ("round_robin", "p2c", "affinity", "cache_aware", "oracle")


def _report(results: Path) -> dict:
    rows = []
    for target in ("vllm", "tera"):
        for c in (1, 8):
            rows.append({"target": target, "concurrency": c, "output_throughput": 50.0 * c})
            for seed in (0, 1):
                raw = {"ttfts": [0.01 * c, 0.02 * c, 0.5], "errors": ["", "", "timeout"]}
                (results / f"{target}-c{c}-seed{seed}.json").write_text(json.dumps(raw))
    rows.append({"target": "tera/vllm", "concurrency": 1, "output_throughput": 1.0})
    steps = [
        {"streams": n, "rate_per_stream": r, "added_latency_p99_ms": 1.0 + r / 100}
        for n in (32, 64)
        for r in (100.0, 200.0)
    ]
    return {"vs_vllm": rows, "relay_coalesce_0ms": {"steps": steps}, **_part_reports()}


def _part_reports() -> dict:
    """One synthetic entry per stand-in part, in the shape its module stores."""
    return {
        "cache_routing": {variant: _cache_rows() for variant in ("uniform", "skewed")},
        "resume": {
            "streams": 4,
            "resumes": 8,
            "resume_gap_p50_ms": 3.0,
            "resume_gap_p99_ms": 9.5,
            "resume_gaps_ms": [1.0, 2.0, 2.5, 3.0, 3.5, 4.0, 6.0, 9.5],
        },
        "hedging": [
            {"setting": s, "p50_ttft_ms": 20.0, "p99_ttft_ms": p99, "hedges_per_request": h}
            for s, p99, h in (("off", 2000.0, 0.0), ("default", 600.0, 0.05))
        ],
        "fairness": [
            {"setting": s, "tenants": t, "protected_refused": i, "p99_ratio": 2.0}
            | {f"{k}_ttft_ms": 10.0 * (i + 1) for k in ("ref_p50", "ref_p99", "flood_p50")}
            | {"flood_p99_ttft_ms": 400.0}
            for i, s in enumerate(("no queue", "fair queue"))
            for t in ("quiet vs noisy", "interactive vs batch")
        ],
    }


def _cache_rows() -> list[dict]:
    return [
        {
            "policy": p,
            "output_tok_s": 100.0 + i,
            "ttft_p50_ms": 10.0 * (i + 1),
            "ttft_p90_ms": 20.0 * (i + 1),
            "ttft_p99_ms": 30.0 * (i + 1),
            "cached_ratio": i / 5,
            "shares": [10, 20 + i, 30],
        }
        for i, p in enumerate(POLICIES)
    ]


def test_every_plot_is_drawn_and_linked(tmp_path: Path) -> None:
    md = plots.write(tmp_path, _report(tmp_path))
    names = ("ttft_cdf.png", "throughput.png", "relay_added_latency.png")
    names += ("cache_routing.png", "resume_gap.png", "hedging.png", "fairness.png")
    for name in names:
        png = (tmp_path / name).read_bytes()
        assert png.startswith(PNG) and len(png) > 1000, name
        assert any(f"]({name})" in line for line in md), name


def test_each_part_alone_draws_only_its_plot(tmp_path: Path) -> None:
    for part, entry in _part_reports().items():
        folder = tmp_path / part
        folder.mkdir()
        md = plots.write(folder, {"started": "now", part: entry})
        (png,) = folder.glob("*.png")
        assert png.read_bytes().startswith(PNG), part
        assert f"]({png.name})" in "".join(md), part


def test_resume_without_raw_gaps_still_draws_its_percentiles(tmp_path: Path) -> None:
    """Reports from before resume_gaps_ms was stored: the p50/p99 lines only."""
    resume = {"resumes": 8, "resume_gap_p50_ms": 3.0, "resume_gap_p99_ms": 9.5}
    plots.write(tmp_path, {"resume": resume})
    assert (tmp_path / "resume_gap.png").read_bytes().startswith(PNG)


def test_parts_that_did_not_run_draw_nothing(tmp_path: Path) -> None:
    assert plots.write(tmp_path, {"started": "now"}) == []
    assert not list(tmp_path.glob("*.png"))
