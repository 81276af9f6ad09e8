"""The streamed chunks' JSON, written directly for plain text (Renderer.delta_json), is
byte for byte what encoding the renderer's dict gives, for every kind of delta: text that
needs escaping, empty deltas, every finish reason, reasoning, tool calls, logprobs; and
the SSE frames around them (choices chunks, the final usage chunk) are unchanged."""

from __future__ import annotations

import pytest

from services.edge.chat.serving import ChatRenderer
from services.edge.completions.serving import CompletionRenderer
from services.edge.generation.render import Renderer, usage_json
from services.edge.sse import ChunkFramer, dumps, frame
from services.proto_gen.tera.v1 import engine_pb2 as pb

TEXTS = [
    "t1@123 ",
    "",
    'quote " backslash \\ slash /',
    "new\nline\ttab\rreturn \x00\x1f\x7f",
    "héllo wörld — ✓ 日本語 😀",
    "\u2028\u2029 line separators",
]
LOGPROB = pb.TokenLogprob(
    token="hi",
    logprob=-0.25,
    bytes=b"hi",
    top=[pb.TopLogprob(token="hi", logprob=-0.25, bytes=b"hi")],
)


def _deltas() -> list[pb.ChoiceDelta]:
    plain = [
        pb.ChoiceDelta(index=0, text=text, num_tokens=1, token_ids=[7], finish_reason=reason)
        for text in TEXTS
        for reason in pb.FinishReason.values()
    ]
    return [
        *plain,
        pb.ChoiceDelta(index=0, reasoning_text='think\n"hard"', num_tokens=1),
        pb.ChoiceDelta(index=0, text="a", reasoning_text="b", num_tokens=2),
        pb.ChoiceDelta(
            index=0,
            tool_calls=[pb.ToolCallDelta(index=0, id="call_1", name="f", arguments='{"x": 1}')],
            finish_reason=pb.FINISH_REASON_TOOL_CALLS,
        ),
        pb.ChoiceDelta(index=0, tool_calls=[pb.ToolCallDelta(index=1, arguments="}")]),
        pb.ChoiceDelta(index=0, text="lp", logprobs=[LOGPROB], num_tokens=1),
    ]


def _renderers() -> list[Renderer]:
    return [
        ChatRenderer(logprobs=False),
        ChatRenderer(logprobs=True),
        CompletionRenderer(logprobs=False),
        CompletionRenderer(logprobs=True),
    ]


@pytest.mark.parametrize("renderer", _renderers(), ids=lambda r: f"{type(r).__name__}-{r.logprobs}")
def test_delta_json_is_the_encoded_delta(renderer: Renderer) -> None:
    framer = ChunkFramer(
        {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"},
        include_usage=True,
    )
    for index in (0, 3, 12):
        for delta in _deltas():
            expected = dumps(renderer.delta(index, delta))
            assert renderer.delta_json(index, delta) == expected
            assert framer.choices(renderer.delta_json(index, delta)) == framer.choices(expected)


def test_the_usage_chunk_is_unchanged() -> None:
    envelope = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m"}
    usage = usage_json(pb.Usage(prompt_tokens=3, completion_tokens=5, reasoning_tokens=2))
    framed = ChunkFramer(envelope, include_usage=True).usage(usage)
    assert framed == frame({**envelope, "choices": [], "usage": usage})
    assert framed.startswith(b'data: {"id":"cmpl-1","object":"text_completion"')
