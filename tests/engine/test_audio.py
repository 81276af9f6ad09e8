"""TimeStretch: OpenAI's `speed` changes duration by exactly 1/speed and keeps the pitch."""

from __future__ import annotations

import numpy as np
import pytest

from services.engine.audio import TimeStretch

RATE = 22_050


def _tone(seconds: float, hz: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _stretch_in_chunks(samples: np.ndarray, speed: float, chunk: int = 5_000) -> np.ndarray:
    stretch = TimeStretch(RATE, speed)
    parts = [stretch.process(samples[i : i + chunk]) for i in range(0, len(samples), chunk)]
    return np.concatenate([*parts, stretch.finish()])


def _dominant_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(len(samples), 1 / RATE)[spectrum.argmax()])


@pytest.mark.parametrize("speed", [0.25, 0.5, 0.8, 1.5, 2.0, 4.0])
def test_duration_is_one_over_speed_and_pitch_is_kept(speed: float) -> None:
    source = _tone(2.0)
    out = _stretch_in_chunks(source, speed)
    assert len(out) / len(source) == pytest.approx(1 / speed, rel=0.04)
    assert _dominant_hz(out) == pytest.approx(220.0, abs=3.0)


def test_speed_one_is_passed_through_untouched() -> None:
    source = _tone(0.5)
    stretch = TimeStretch(RATE, 1.0)
    assert stretch.process(source) is source
    assert len(stretch.finish()) == 0
