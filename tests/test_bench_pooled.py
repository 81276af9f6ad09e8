"""bench.pooled reads several vs_vllm runs' result folders as the bench writes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.pooled import NOT_RUN, RunFigures, consecutive_met, goal_rows, pool, read_run
from bench.vs_vllm import HALVES_APART, PACE_ADJUSTED, combine


def _write_run(
    folder: Path,
    ratio: float,
    ttft_delta_ms: float,
    vllm_rates: tuple[float, ...],
    ttft_mean_delta_ms: float = 0.0,
    at_equal_pace: float | None = None,
    targets: tuple[str, ...] = ("tera",),
) -> Path:
    """A run at concurrency 8 as bench/vs_vllm.py leaves it: report.json's rows and one
    `vllm bench serve` result per target and half (seed 0 ran first, the last seed last).
    Every other target's halves each hold a failed request too, whose zero first-token
    time must not count."""
    folder.mkdir()
    shift = ttft_mean_delta_ms / 1000
    for seed, rate in enumerate(vllm_rates):
        half = {"total_output_tokens": 1000, "duration": 1000 / rate}
        vllm = half | {"ttfts": [0.1, 0.3], "errors": ["", ""]}
        other = half | {"ttfts": [0.1 + shift, 0.3 + shift, 0.0], "errors": ["", "", "reset"]}
        (folder / f"vllm-c8-seed{seed}.json").write_text(json.dumps(vllm))
        for target in targets:
            (folder / f"{target}-c8-seed{seed}.json").write_text(json.dumps(other))
    row = {
        "concurrency": 8,
        "output_throughput": ratio,
        "p50_ttft_ms": ttft_delta_ms,
        "p99_ttft_ms": 2 * ttft_delta_ms,
    }
    if at_equal_pace is not None:
        row[PACE_ADJUSTED] = at_equal_pace
    ratio_rows = [{"target": f"{target}/vllm", **row} for target in targets]
    vllm_row = {"target": "vllm", "concurrency": 8, "p50_ttft_ms": 200.0}
    (folder / "report.json").write_text(json.dumps({"vs_vllm": [vllm_row, *ratio_rows]}))
    return folder


def test_runs_read_together_give_medians_parity_count_and_vllms_own_spread(
    tmp_path: Path,
) -> None:
    runs = [
        _write_run(tmp_path / "a", 0.98, 4.0, (100.0, 90.0), 5.0),  # vLLM's last half 10 % slower
        _write_run(tmp_path / "b", 1.03, -2.0, (100.0, 104.0), -3.0),
        _write_run(tmp_path / "c", 1.01, 1.0, (100.0, 120.0, 80.0, 101.0), 2.0),  # two rounds
    ]
    [row] = pool([f for run in runs for f in read_run(run)])
    assert row["concurrency"] == 8 and row["runs"] == 3
    assert row["throughput_ratio_median"] == pytest.approx(1.01)
    assert row["runs_at_or_above_1"] == 2
    assert row["ttft_p50_delta_ms_median"] == pytest.approx(1.0)
    assert row["ttft_mean_delta_ms_median"] == pytest.approx(2.0)
    low, high = map(float, row["throughput_ratio_ci95"].split(" - "))
    assert 0.98 <= low <= 1.01 <= high <= 1.03
    # |last / first - 1| per run: 10, 4 and 1 %, read in the order the halves ran.
    assert row["vllm_halves_apart_pct_median"] == pytest.approx(4.0)
    assert row["vllm_halves_apart_pct_max"] == pytest.approx(10.0)


def test_the_ratio_at_equal_engine_pace_is_pooled_where_the_runs_traced_the_engine(
    tmp_path: Path,
) -> None:
    runs = [
        _write_run(tmp_path / "a", 0.90, 0.0, (100.0, 100.0), at_equal_pace=1.01),
        _write_run(tmp_path / "b", 1.05, 0.0, (100.0, 100.0), at_equal_pace=0.99),
        _write_run(tmp_path / "c", 1.00, 0.0, (100.0, 100.0), at_equal_pace=1.00),
    ]
    [row] = pool([f for run in runs for f in read_run(run)])
    assert row["at_equal_pace_median"] == pytest.approx(1.00)
    assert row["at_equal_pace_range"] == "0.990 - 1.010"
    [untraced] = pool(read_run(_write_run(tmp_path / "d", 1.0, 0.0, (100.0, 100.0))))
    assert "at_equal_pace_median" not in untraced


def test_a_targets_row_says_how_far_its_own_two_halves_land_apart() -> None:
    def half(duration: float, tokens: int) -> dict:
        return {
            "ttfts": [0.1],
            "itls": [[0.01]],
            "errors": [""],
            "duration": duration,
            "completed": 1,
            "num_prompts": 1,
            "total_output_tokens": tokens,
        }

    row = combine([half(2.0, 40), half(2.0, 44)])
    assert row[HALVES_APART] == pytest.approx(1.1)


def test_a_run_whose_vllm_half_served_nothing_is_named_not_divided_by(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "failed", 1.0, 0.0, (100.0, 100.0))
    (run / "vllm-c8-seed0.json").write_text(json.dumps({"total_output_tokens": 0, "duration": 0}))
    with pytest.raises(ValueError, match="failed: vLLM's first half at concurrency 8 served"):
        read_run(run)


@pytest.mark.parametrize("rates", [(100.0, 100.0), (100.0,) * 4])
def test_a_run_missing_a_halfs_result_is_named(tmp_path: Path, rates: tuple[float, ...]) -> None:
    run = _write_run(tmp_path / "partial", 1.0, 0.0, rates)
    (run / "tera-c8-seed1.json").unlink()
    with pytest.raises(ValueError, match="partial: a half's result at concurrency 8 is missing"):
        read_run(run)


def test_a_control_runs_ratios_are_pooled_as_their_own_rows_after_teras(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "a", 1.02, 3.0, (100.0, 100.0), 4.0, targets=("vllm-b", "tera"))
    figures = read_run(run)
    assert [f.target for f in figures] == ["vllm-b", "tera"]
    control = figures[0]
    assert control.ttft_p99_delta_ms == pytest.approx(6.0)
    assert control.ttft_p50_delta_share == pytest.approx(3.0 / 200.0)
    assert control.ttft_mean_delta_ms == pytest.approx(4.0)  # its own halves, failures left out
    assert [(row["target"], row["concurrency"]) for row in pool(figures)] == [
        ("tera", 8),
        ("vllm-b", 8),
    ]


def _cell(
    c: int,
    ratio: float = 1.01,
    p50_ms: float = 1.0,
    p99_ms: float = 4.0,
    share: float = 0.01,
    target: str = "tera",
) -> RunFigures:
    """One target's figures at one concurrency, inside every bound of the goal by default."""
    return RunFigures(target, c, ratio, p50_ms, p99_ms, share, p50_ms, 1.0)


def _run(target: str = "tera", **at_32: float) -> list[RunFigures]:
    """A run at concurrency 1, 8 and 32 that meets issue 22's goal unless told otherwise."""
    return [
        _cell(1, target=target),
        _cell(8, target=target),
        _cell(32, target=target, **at_32),
    ]


@pytest.mark.parametrize(
    ("figures", "failed_part"),
    [
        ([_cell(1), _cell(8, ratio=0.999), _cell(32)], "throughput_all_at_or_above_1"),
        ([_cell(1, p50_ms=2.1), _cell(8), _cell(32)], "c1_ttft_p50_and_p99"),
        ([_cell(1, p99_ms=5.1), _cell(8), _cell(32)], "c1_ttft_p50_and_p99"),
        ([_cell(1), _cell(8), _cell(32, share=-0.021)], "c32_ttft_p50_within_2pct"),
    ],
)
def test_each_part_of_the_goal_fails_a_run_on_its_own(
    figures: list[RunFigures], failed_part: str
) -> None:
    [row] = goal_rows({"run": figures})
    assert row[failed_part] is False and row["all"] is False
    assert all(
        row[part] is True for part in row if part not in (failed_part, "all", "target", "run")
    )


def test_a_run_without_every_concurrency_cannot_meet_the_goal() -> None:
    [row] = goal_rows({"c1 only": [_cell(1)]})
    assert row["c1_ttft_p50_and_p99"] is True
    assert row["throughput_all_at_or_above_1"] == NOT_RUN
    assert row["c32_ttft_p50_within_2pct"] == NOT_RUN
    assert row["all"] is False


def test_the_goal_counts_consecutive_runs_per_target_and_a_miss_breaks_the_streak() -> None:
    runs = {
        "a": [*_run(), *_run("vllm-b")],
        "b": [*_run(), *_run("vllm-b", ratio=0.98)],
        "c": [*_run(ratio=0.98), *_run("vllm-b")],
        "d": [*_run(), *_run("vllm-b")],
    }
    rows = goal_rows(runs)
    assert [(row["target"], row["run"], row["all"]) for row in rows] == [
        ("tera", "a", True),
        ("tera", "b", True),
        ("tera", "c", False),
        ("tera", "d", True),
        ("vllm-b", "a", True),
        ("vllm-b", "b", False),
        ("vllm-b", "c", True),
        ("vllm-b", "d", True),
    ]
    assert consecutive_met(rows, "tera") == 2
    assert consecutive_met(rows, "vllm-b") == 2
