"""bench/plots.py draws each plot from the report and the raw `vllm bench serve` results
its part left, and draws nothing for parts that did not run."""

from __future__ import annotations

import json
from pathlib import Path

from bench import plots

PNG = b"\x89PNG\r\n\x1a\n"


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
    return {"vs_vllm": rows, "relay_coalesce_0ms": {"steps": steps}}


def test_every_plot_is_drawn_and_linked(tmp_path: Path) -> None:
    md = plots.write(tmp_path, _report(tmp_path))
    for name in ("ttft_cdf.png", "throughput.png", "relay_added_latency.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG), name
        assert any(f"]({name})" in line for line in md), name


def test_parts_that_did_not_run_draw_nothing(tmp_path: Path) -> None:
    assert plots.write(tmp_path, {"started": "now"}) == []
    assert not list(tmp_path.glob("*.png"))
