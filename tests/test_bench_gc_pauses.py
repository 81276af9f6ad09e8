"""The gc_pauses part's summary: full collections counted per service, and the time
each stopped its process averaged over them (none: no figure, not zero)."""

from __future__ import annotations

from bench.gc_pauses import _summary


def _step(edge: tuple[int, float], router: tuple[int, float], cores: float) -> dict:
    return {
        "cores_per_10k": cores,
        "added_latency_p99_ms": cores * 100,
        "tokens_per_message": 1.0,
        "errors": 0,
        "edge_collections": edge[0],
        "edge_stopped_ms": edge[1],
        "router_collections": router[0],
        "router_stopped_ms": router[1],
    }


def test_summary_averages_pauses_over_collections_not_steps() -> None:
    steps = [_step((1, 50.0), (0, 0.0), 0.5), _step((0, 0.0), (0, 0.0), 0.4)]
    steps += [_step((2, 70.0), (0, 0.0), 0.6), _step((0, 0.0), (0, 0.0), 0.5)]
    row = _summary("not frozen", steps)
    assert row["edge full collections"] == 3
    assert row["edge ms a full collection"] == 40.0
    assert row["router full collections"] == 0
    assert row["router ms a full collection"] is None
    assert row["cores per 10k tok/s (median)"] == 0.5
    assert row["added latency p99 ms (median)"] == 50.0
