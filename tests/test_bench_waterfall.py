"""bench/waterfall.py cuts a request's time to first token at the marks of its trace;
a trace with vLLM's add_request mark splits the engine's segment in two."""

from __future__ import annotations

from bench.waterfall import SERVER, Sent, marks, segments
from tests.observability.otlp_receiver import ReceivedSpan

MS = 1_000_000


def _span(service: str, kind: int, start_ms: int, name: str = "", **events: int) -> ReceivedSpan:
    return ReceivedSpan(
        service=service,
        name=name,
        kind=kind,
        trace_id="t",
        span_id=f"{service}{kind}{name}",
        parent_id="",
        attributes={},
        events=list(events),
        status_code=0,
        start_ns=start_ms * MS,
        event_ns={k: v * MS for k, v in events.items()},
    )


def _trace(**engine_events: int) -> list[ReceivedSpan]:
    return [
        _span("tera-edge", SERVER, 1, first_message=12, first_chunk_written=13),
        _span("tera-edge", 3, 2),
        _span("tera-router", SERVER, 3),
        _span("tera-router", 3, 4),
        _span("tera-router", 1, 4, "attempt", first_message=11),
        _span("tera-engine", SERVER, 5, **engine_events),
    ]


def test_every_segment_from_send_to_first_bytes() -> None:
    marked = marks(_trace(first_token=10), Sent("t", 0, 15 * MS))
    assert marked is not None
    cut = segments(marked)
    assert cut["engine to first output"] == 5
    assert cut["edge -> client"] == 2
    assert sum(cut.values()) == 15, "the segments tile the whole time to first token"


def test_vllm_add_request_splits_the_engine_segment() -> None:
    marked = marks(_trace(**{"vllm.add_request": 7, "first_token": 10}), Sent("t", 0, 15 * MS))
    assert marked is not None
    cut = segments(marked)
    assert "engine to first output" not in cut
    assert (cut["engine prepare (template, tokenize)"], cut["vLLM to first output"]) == (2, 3)
    assert sum(cut.values()) == 15


def test_an_incomplete_trace_is_left_out() -> None:
    assert marks(_trace(first_token=10)[:-1], Sent("t", 0, 15 * MS)) is None
