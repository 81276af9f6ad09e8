"""The edge's inter-token exemplars point at each stream's slow gaps, not at every token."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from services.edge import observe
from services.edge.observe import EdgeMetrics, GenerationObserver
from services.proto_gen.tera.v1 import engine_pb2 as pb

# Seconds between tokens: new worsts at 2, 20 and 200 ms; 3 and 4 ms are not.
GAPS = (0.002, 0.02, 0.003, 0.2, 0.004)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Clock]:
    fake = _Clock()
    monkeypatch.setattr(observe.time, "monotonic", fake.monotonic)
    yield fake


async def _tokens(clock: _Clock) -> AsyncIterator[pb.GenerateResponse]:
    yield pb.GenerateResponse(choices=[pb.ChoiceDelta(text="a", num_tokens=1)])
    for gap in GAPS:
        clock.now += gap
        yield pb.GenerateResponse(choices=[pb.ChoiceDelta(text="b", num_tokens=1)])


def _exemplars(metrics: EdgeMetrics) -> dict[float, tuple[float, str]]:
    """Bucket bound -> (the exemplar's gap, its trace id), for the ITL histogram."""
    found = {}
    for family in metrics.registry.collect():
        if family.name != "tera_edge_inter_token_latency_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.exemplar is not None:
                exemplar = sample.exemplar
                found[float(sample.labels["le"])] = (exemplar.value, exemplar.labels["trace_id"])
    return found


async def test_only_a_streams_new_slowest_gap_carries_its_trace(clock: _Clock) -> None:
    metrics = EdgeMetrics()
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
        observer = GenerationObserver(
            metrics, {}, model="m", max_tokens=None, temperature=None, on_usage=lambda u: None
        )  # type: ignore[arg-type]
        async for _ in observer.watch(_tokens(clock)):
            pass

    exemplars = _exemplars(metrics)
    assert exemplars == {
        0.0025: (pytest.approx(0.002), trace_id),
        0.025: (pytest.approx(0.02), trace_id),
        0.25: (pytest.approx(0.2), trace_id),
    }
    # Every gap is still counted: 3 and 4 ms land in the 5 ms bucket, without an exemplar.
    counts = {
        float(s.labels["le"]): s.value
        for family in metrics.registry.collect()
        if family.name == "tera_edge_inter_token_latency_seconds"
        for s in family.samples
        if s.name.endswith("_bucket")
    }
    assert counts[0.005] - counts[0.0025] == 2
    assert counts[float("inf")] == len(GAPS)
