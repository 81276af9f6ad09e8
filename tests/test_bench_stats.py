"""The statistics the resume-cost part reports: a bootstrap CI of the median, the samples
a CI would need to reach a width, and per-block ratios of alternated windows."""

from __future__ import annotations

import random

from bench.common import median_ci, samples_needed


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
    values = [0.9, 1.1, 1.0, 1.3, 0.95]
    assert median_ci(values) == median_ci(values)
    assert median_ci([1.02] * 8) == (1.02, 1.02)


def test_samples_needed_scales_with_the_square_of_the_width() -> None:
    # +-6 % on 16 samples: +-3 % takes four times as many.
    assert samples_needed(16, (0.94, 1.06), 1.0, 0.03) == 64
    assert samples_needed(16, (0.985, 1.015), 1.0, 0.03) == 4
