"""bench/waterfall.py cuts a request's time to first token at the marks of its trace;
a trace with vLLM's add_request mark splits the engine's segment in two, and vLLM's own
request span cuts Tera's stack and vLLM's own server alike."""

from __future__ import annotations

from bench.waterfall import (
    SERVER,
    SIDE_BY_SIDE,
    VLLM_SERVER,
    VLLM_SPAN,
    VLLM_TTFT,
    Sent,
    first_token,
    marks,
    segments,
    server_marks,
)
from tests.observability.otlp_receiver import ReceivedSpan

MS = 1_000_000


def _span(
    service: str,
    kind: int,
    start_ms: int,
    name: str = "",
    attributes: dict | None = None,
    **events: int,
) -> ReceivedSpan:
    return ReceivedSpan(
        service=service,
        name=name,
        kind=kind,
        trace_id="t",
        span_id=f"{service}{kind}{name}",
        parent_id="",
        attributes=attributes or {},
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


def _vllm_span(service: str, arrival_ms: int, ttft_ms: int) -> ReceivedSpan:
    """vLLM's request span as vLLM exports it: started at arrival, made at the end."""
    return _span(service, SERVER, arrival_ms, VLLM_SPAN, {VLLM_TTFT: ttft_ms / 1000})


def test_vllms_request_span_cuts_teras_stack_into_before_vllm_and_after() -> None:
    spans = [*_trace(**{"vllm.add_request": 7, "first_token": 10}), _vllm_span("tera-engine", 6, 3)]
    marked = marks(spans, Sent("t", 0, 15 * MS))
    assert marked is not None, "the engine's own span is told apart from vLLM's"
    assert marked["engine receive"] == 5 * MS
    parts = segments(marked, SIDE_BY_SIDE)
    assert parts == {
        "before vLLM": 6,
        "vLLM (template, tokenize, prefill)": 3,
        "after vLLM": 6,
    }
    assert segments(marked)["edge -> client"] == 2, "the fine segments are as before"


def test_vllms_own_server_is_cut_at_the_same_marks() -> None:
    marked = server_marks([_vllm_span(VLLM_SERVER, 1, 8)], Sent("t", 0, 11 * MS))
    assert marked is not None
    parts = segments(marked, SIDE_BY_SIDE)
    assert parts == {"before vLLM": 1, "vLLM (template, tokenize, prefill)": 8, "after vLLM": 2}
    assert segments(marked) == {}, "none of Tera's hops"


def test_a_server_trace_without_vllms_span_is_left_out() -> None:
    assert server_marks([_span(VLLM_SERVER, SERVER, 1, "other")], Sent("t", 0, 11 * MS)) is None


class _Chunks:
    """A response body read as the network delivered it."""

    def __init__(self, *chunks: bytes) -> None:
        self.unread = list(chunks)

    async def readany(self) -> bytes:
        return self.unread.pop(0) if self.unread else b""


ROLE = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
TOKEN = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'


async def test_the_client_mark_is_the_first_token_not_the_role_chunk() -> None:
    """vLLM's server writes the role chunk on its own before the token; timing its bytes
    would put the token's write and delivery outside the waterfall."""
    body = _Chunks(ROLE, TOKEN[:20], TOKEN[20:], b"data: [DONE]\n\n")
    await first_token(body)  # type: ignore[arg-type]
    assert body.unread == [b"data: [DONE]\n\n"], "stops at the read that completes the token"


async def test_the_client_mark_is_taken_at_a_write_with_the_role_and_the_token() -> None:
    body = _Chunks(ROLE + TOKEN, b"data: [DONE]\n\n")
    await first_token(body)  # type: ignore[arg-type]
    assert body.unread == [b"data: [DONE]\n\n"]
