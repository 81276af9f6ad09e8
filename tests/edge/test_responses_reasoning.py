"""Reasoning in the Responses API, through the official SDK on a stand-in engine that
thinks: its first 3 tokens come as reasoning ("tok0 tok1 tok2 "), as a reasoning parser
splits a thinking model's output.

The output starts with a `reasoning` item (its text as reasoning_text content, and as
its summary when reasoning.summary asks for one); streamed, the item's reasoning_text
events come with OpenAI's reasoning_summary_part / reasoning_summary_text events.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai import OpenAI

from tests.conftest import SCRIPTED_MODEL, RunningStack

THOUGHT = "tok0 tok1 tok2 "


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAI]:
    from devstack.stack import Stack
    from tests.conftest import _plan, scripted_args

    folder = tmp_path_factory.mktemp("responses-reasoning")
    plan = _plan(folder, 1, scripted_args(reasoning_tokens=3), [SCRIPTED_MODEL])
    stack = Stack(plan).start(timeout_s=60)
    try:
        yield OpenAI(base_url=RunningStack(stack).base_url, api_key="sk-x", max_retries=0)
    finally:
        stack.stop()


def _kwargs(summary: str | None = "auto") -> dict:
    reasoning = {"effort": "low", **({"summary": summary} if summary else {})}
    return {"model": SCRIPTED_MODEL, "input": "hi", "max_output_tokens": 5, "reasoning": reasoning}


def test_reasoning_item_with_its_summary(client: OpenAI) -> None:
    r = client.responses.create(**_kwargs())  # type: ignore[call-overload]
    assert [item.type for item in r.output] == ["reasoning", "message"]
    reasoning = r.output[0]
    assert reasoning.content is not None and reasoning.content[0].text == THOUGHT
    assert [(s.type, s.text) for s in reasoning.summary] == [("summary_text", THOUGHT)]
    assert r.output_text == "tok3 tok4 "
    assert r.usage is not None and r.usage.output_tokens_details.reasoning_tokens == 3
    assert r.reasoning is not None and r.reasoning.summary == "auto"


def test_streamed_summary_events_in_order(client: OpenAI) -> None:
    events = list(client.responses.create(**_kwargs("detailed"), stream=True))  # type: ignore[call-overload]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done_at = next(i for i, e in enumerate(events) if e.type == "response.output_item.done")
    thinking = [e for e in events[: done_at + 1] if e.type not in ("response.created",)]
    kinds = [e.type for e in thinking if not e.type.endswith(".delta")]
    assert kinds == [
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
    ]
    item_id = events[done_at].item.id
    summary = [e for e in thinking if e.type.startswith("response.reasoning_summary")]
    assert all(e.item_id == item_id and e.output_index == 0 for e in summary)
    assert all(e.summary_index == 0 for e in summary)
    added = next(e for e in summary if e.type == "response.reasoning_summary_part.added")
    assert added.part.text == ""
    deltas = [e.delta for e in summary if e.type == "response.reasoning_summary_text.delta"]
    assert "".join(deltas) == THOUGHT and len(deltas) >= 1
    (text_done,) = [e for e in summary if e.type == "response.reasoning_summary_text.done"]
    (part_done,) = [e for e in summary if e.type == "response.reasoning_summary_part.done"]
    assert text_done.text == part_done.part.text == THOUGHT
    final = events[-1].response
    assert final.output[0].summary[0].text == THOUGHT and final.output_text == "tok3 tok4 "


def test_no_summary_events_unless_asked(client: OpenAI) -> None:
    events = list(client.responses.create(**_kwargs(None), stream=True))  # type: ignore[call-overload]
    types = {e.type for e in events}
    assert "response.reasoning_text.delta" in types
    assert not any(t.startswith("response.reasoning_summary") for t in types)
    reasoning = events[-1].response.output[0]
    assert reasoning.type == "reasoning" and reasoning.summary == []


def test_stream_helper_and_logprobs_skip_the_reasoning(client: OpenAI) -> None:
    with client.responses.stream(  # type: ignore[call-overload]
        **{**_kwargs(), "max_output_tokens": 16},
        include=["message.output_text.logprobs"],
        extra_body={"stop": ["tok5"]},  # a completed response, as the helper wants
    ) as stream:
        final = stream.get_final_response()
    assert final.status == "completed" and final.output[0].summary[0].text == THOUGHT
    part = final.output[1].content[0]
    assert part.text == "tok3 tok4 " and part.logprobs[0].token == "tok3 "
    assert not {"tok0 ", "tok1 ", "tok2 "} & {lp.token for lp in part.logprobs}


def test_reasoning_goes_back_with_previous_response_id(client: OpenAI) -> None:
    first = client.responses.create(**_kwargs())  # type: ignore[call-overload]
    follow = client.responses.create(  # type: ignore[call-overload]
        model=SCRIPTED_MODEL, input="more", previous_response_id=first.id, max_output_tokens=4
    )
    # user "hi" (1+4) + the assistant's reasoning and answer as one message (2+4) +
    # "more" (1+4): the stand-in counts content words, so the reasoning is carried but
    # not counted; the answer is.
    assert follow.usage is not None and follow.usage.input_tokens == 16
