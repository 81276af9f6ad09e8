"""The statistics the resume-cost part reports: a bootstrap CI of the median, the samples
a CI would need to reach a width, and per-block ratios of alternated windows."""

from __future__ import annotations

import random

import pytest

from bench import resume_cost
from bench.common import median_ci, samples_needed
from bench.relay import StepResult


def test_median_ci_brackets_the_median_and_narrows_with_more_samples() -> None:
    rng = random.Random(1)
    few = [rng.gauss(1.0, 0.05) for _ in range(10)]
    many = few + [rng.gauss(1.0, 0.05) for _ in range(150)]
    low, high = median_ci(few)
    assert low < 1.0 < high
    assert low <= sorted(few)[5] <= high
    wide, narrow = high - low, median_ci(many)[1] - median_ci(many)[0]
    assert narrow < wide / 2, (narrow, wide)


def test_median_ci_is_seeded_and_degenerate_for_equal_values() -> None:
    rng = random.Random(2)
    values = [rng.gauss(1.0, 0.05) for _ in range(41)]
    # Few resamples: unseeded, their extremes would differ from call to call.
    assert len({median_ci(values, resamples=20) for _ in range(5)}) == 1
    assert median_ci([1.02] * 8) == (1.02, 1.02)


def test_samples_needed_scales_with_the_square_of_the_width() -> None:
    # +-6 % on 16 samples: +-3 % takes four times as many.
    assert samples_needed(16, (0.94, 1.06), 1.0, 0.03) == 64
    assert samples_needed(16, (0.985, 1.015), 1.0, 0.03) == 4


def _window(router: float, edge: float, tokens_per_chunk: float = 1.0) -> StepResult:
    return StepResult(
        streams=1,
        rate_per_stream=50.0,
        tokens_per_s=50.0,
        added_itl_p50_ms=0.0,
        added_itl_p99_ms=0.0,
        added_latency_p50_ms=0.0,
        added_latency_p99_ms=0.0,
        edge_cpu_per_1k=edge,
        router_cpu_per_1k=router,
        tokens_per_chunk=tokens_per_chunk,
        relay_cores_per_10k=(edge + router) * 10,
        cores={},
        errors=0,
    )


def test_ratio_rows_give_the_median_block_ratio_per_arm_pair() -> None:
    """Router: on costs 2 % over off, ids 1 % over before. Each window slows every arm
    alike (the machine's other tenants) and each stack has its own speed (placement):
    the rotation cancels both once a block pools each arm's windows. One block's outlier
    moves the median by nothing. Before's stand-in sends 1.25 tokens a message: the
    same cost per token is 1.25 times the cost per message."""
    cost = {"on": 1.02 * 1.01, "off": 1.01, "before": 1.0}
    placement = (1.0, 1.04, 0.97)
    rotation = resume_cost.ROTATION
    windows = []
    for w in range(9 * len(rotation)):
        tenants = 1 + 0.05 * w
        outlier = 1.5 if w == 13 else 1.0
        for k, speed in enumerate(placement):
            arm = rotation[(k + w) % len(rotation)]
            spike = outlier if arm == "on" else 1.0
            slow = tenants * speed
            batch = 1.25 if arm == "before" else 1.0
            windows.append((arm, _window(cost[arm] * slow * spike, 2.0 * slow, batch)))
    size = resume_cost.BLOCK
    blocks = [resume_cost._block(windows[size * b : size * (b + 1)]) for b in range(9)]
    rows = {
        (r["ratio"], r["figure"]): r
        for r in (
            resume_cost._ratio_row(blocks, windows, a, b, f)
            for a, b in resume_cost.RATIOS
            for f in resume_cost.FIGURES
        )
    }
    on_off = rows["on/off", "router_cpu_per_1k"]
    assert on_off["median"] == pytest.approx(1.02, abs=1e-3)
    assert on_off["ci95_low"] <= 1.02 <= on_off["ci95_high"]
    assert rows["off/before", "router_cpu_per_1k"]["median"] == pytest.approx(1.01, abs=1e-3)
    assert rows["on/before", "edge_cpu_per_1k"]["median"] == pytest.approx(1.0)
    per_message = rows["off/before", "router_cpu_per_1k_messages"]["median"]
    assert per_message == pytest.approx(1.01 / 1.25, abs=1e-3)
