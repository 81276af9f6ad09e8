"""The relay part's GPU-shaped figures: every stream's tokens arrive, and each step is
reported beside the host reference measured around it (the host's speed drifts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import relay, sections


def test_each_gpu_shaped_step_carries_the_host_speed_it_ran_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay, "STREAM_SECONDS", 0.5)
    references = iter([40.0, 60.0, 100.0, 120.0])
    monkeypatch.setattr(relay, "host_reference_ms", lambda: next(references))

    result = relay.run_gpu_shaped(tmp_path, (2, 4))

    steps = result["steps"]
    assert [s["streams"] for s in steps] == [2, 4]
    assert [s["errors"] for s in steps] == [0, 0]
    assert [s["host_reference_ms"] for s in steps] == [50.0, 110.0]
    table = "\n".join(sections._gpu_shaped_section(result))
    assert "host_reference_ms" in table and "110" in table


def test_the_host_reference_runs_its_work_over_real_sockets() -> None:
    assert 0 < relay.host_reference_ms() < 10_000
