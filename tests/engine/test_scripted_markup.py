"""The stand-in's tool/reasoning parser: the same split however the text is cut into
messages, so a continuation that replays the emitted text resumes it exactly."""

from __future__ import annotations

import pytest

from services.engine.backends.scripted_markup import MarkupParser, Parsed

TEXT = (
    "<think>Paris, metric.</think>Let me look.<tool_call>get_weather\n"
    '{"city": "Paris"}</tool_call><tool_call>get_time\n{}</tool_call>'
)


def _feed(pieces: list[str]) -> dict:
    parser = MarkupParser()
    out = {"content": "", "reasoning": "", "calls": {}}
    for i, piece in enumerate(pieces):
        _add(out, parser.feed(piece, final=i == len(pieces) - 1))
    return out


def _add(out: dict, parsed: Parsed) -> None:
    out["content"] += parsed.content
    out["reasoning"] += parsed.reasoning
    for call in parsed.calls:
        seen = out["calls"].setdefault(call.index, {"ids": 0, "name": "", "arguments": ""})
        seen["ids"] += bool(call.id)
        seen["name"] += call.name
        seen["arguments"] += call.arguments


WHOLE = {
    "content": "Let me look.",
    "reasoning": "Paris, metric.",
    "calls": {
        0: {"ids": 1, "name": "get_weather", "arguments": '{"city": "Paris"}'},
        1: {"ids": 1, "name": "get_time", "arguments": "{}"},
    },
}


@pytest.mark.parametrize("size", [1, 2, 3, 7, len(TEXT)])
def test_the_split_does_not_depend_on_how_the_text_arrives(size: int) -> None:
    pieces = [TEXT[i : i + size] for i in range(0, len(TEXT), size)]
    assert _feed(pieces) == WHOLE


@pytest.mark.parametrize("cut", [1, 5, 20, 40, 75, 100, len(TEXT) - 3])
def test_a_replayed_prefix_resumes_where_the_stream_stopped(cut: int) -> None:
    out = {"content": "", "reasoning": "", "calls": {}}
    _add(out, MarkupParser().feed(TEXT[:cut], final=False))  # what the caller got
    continuation = MarkupParser()
    continuation.feed(TEXT[:cut], final=False)  # replayed, not sent
    _add(out, continuation.feed(TEXT[cut:], final=True))
    assert out == WHOLE
