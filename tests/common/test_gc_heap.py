"""The garbage collector's pauses reach a service's metrics, by generation."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry

from services.common.gc_heap import expose_gc_metrics


def _pauses(registry: CollectorRegistry, generation: int) -> float:
    value = registry.get_sample_value(
        "tera_gc_pause_seconds_count", {"generation": str(generation)}
    )
    return value or 0.0


def test_each_collection_is_counted_under_its_own_generation() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    expose_gc_metrics(first)
    expose_gc_metrics(second)  # a second registry shows the same process-wide figures
    gc.disable()  # no automatic collection in between: only the ones asked for
    try:
        before = [_pauses(first, g) for g in range(3)]
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
        after = [_pauses(first, g) for g in range(3)]
        shown = [_pauses(second, g) for g in range(3)]
    finally:
        gc.enable()
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 0, 2]
    assert shown == after
    walked = first.get_sample_value("tera_gc_pause_seconds_sum", {"generation": "2"})
    assert walked is not None and walked > 0
