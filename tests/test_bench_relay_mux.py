"""The relay_mux part's harness: each arm delivers every token it offers, so its CPU per
token is measured over the whole load (a multiplexed step that dropped streams would
look cheap)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import relay_mux


def test_every_arm_delivers_every_offered_token(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(relay_mux, "STREAMS", (3, 5))
    monkeypatch.setattr(relay_mux, "WINDOW_S", 0.3)
    result = relay_mux.run(tmp_path)
    arms = {(row["arm"], row["streams"]) for row in result["rows"]}
    assert arms == {(arm, n) for arm in ("one", "mux", "sse") for n in (3, 5)}
    assert [row["tokens_lost"] for row in result["rows"]] == [0] * 6
    for row in result["projection"]:
        assert row["relay_mux_projected_cores"] == pytest.approx(
            row["grpc_hops_mux_cores"] + row["sse_floor_cores"], abs=0.002
        )
