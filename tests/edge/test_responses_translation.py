"""Unit tests of the Responses adapters: request validation, items -> chat messages,
and deltas -> output items and typed events. No processes."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.edge.errors import from_validation_error
from services.edge.responses.items import to_messages
from services.edge.responses.output import OutputBuilder
from services.edge.responses.protocol import ResponseRequest
from services.proto_gen.tera.v1 import engine_pb2 as pb


def _request(**fields: object) -> ResponseRequest:
    return ResponseRequest.model_validate({"model": "m", "input": "hi", **fields})


def test_string_input_is_one_user_message() -> None:
    items = _request().input_items()
    assert items[0]["type"] == "message" and items[0]["role"] == "user"
    assert items[0]["content"] == [{"type": "input_text", "text": "hi"}]
    assert items[0]["id"].startswith("msg_")


def test_assistant_turn_items_become_one_message() -> None:
    request = _request(
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {
                "type": "reasoning",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": "t"}],
            },
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ],
        instructions="be brief",
    )
    messages = to_messages(request.instructions, request.input_items())
    assert [m.role for m in messages] == ["system", "user", "assistant", "tool"]
    assistant = messages[2]
    assert assistant.reasoning_content == "t"
    assert [(c.id, c.name) for c in assistant.tool_calls] == [("c1", "f")]
    assert messages[3].tool_call_id == "c1" and messages[3].content == "sunny"


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"tools": [{"type": "web_search_preview"}]}, "tools[0]", "web_search_preview"),
        ({"tool_choice": {"type": "file_search"}}, "tool_choice", "file_search"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0]", "item_reference"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]},
            "input[0]",
            "input_image",
        ),
        ({"background": True}, "background", "background"),
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        ({"text": {"format": {"type": "json_schema"}}}, "text.format", "name and a schema"),
    ],
)
def test_refusals_name_the_parameter(fields: dict, param: str, words: str) -> None:
    with pytest.raises(ValidationError) as err:
        _request(**fields)
    error = from_validation_error(err.value)
    assert error.param is not None and error.param.startswith(param), error.param
    assert words in error.message


def test_forced_function_and_effort_reach_the_proto() -> None:
    request = _request(
        tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        tool_choice={"type": "function", "name": "f"},
        reasoning={"effort": "low"},
        max_output_tokens=7,
        top_k=3,
    )
    proto = request.to_proto("id", "m", request.requested_max_tokens, request.input_items())
    assert proto.tools.choice.function_name == "f"
    assert proto.chat.reasoning_effort == "low"
    assert proto.sampling.max_tokens == 7 and proto.sampling.top_k == 3


def _delta(**fields: object) -> pb.ChoiceDelta:
    return pb.ChoiceDelta(**fields)  # type: ignore[arg-type]


def test_builder_orders_items_and_events() -> None:
    builder = OutputBuilder(summary=True)
    events = builder.add(_delta(reasoning_text="hmm"))
    events += builder.add(_delta(text="Hel"))
    events += builder.add(_delta(text="lo"))
    call = pb.ToolCallDelta(index=0, id="call_1", name="f", arguments='{"a"')
    events += builder.add(_delta(tool_calls=[call]))
    events += builder.add(_delta(tool_calls=[pb.ToolCallDelta(index=0, arguments=": 1}")]))
    events += builder.close("completed")
    assert [i["type"] for i in builder.items] == ["reasoning", "message", "function_call"]
    reasoning, message, function = builder.items
    assert reasoning["summary"] == [{"type": "summary_text", "text": "hmm"}]
    assert message["content"][0]["text"] == "Hello" and message["status"] == "completed"
    assert function["arguments"] == '{"a": 1}' and function["call_id"] == "call_1"
    types = [e["type"] for e in events]
    assert types[:5] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
    ]
    assert types.count("response.output_item.added") == 3
    assert types.count("response.output_item.done") == 3
    assert types[-2:] == ["response.function_call_arguments.done", "response.output_item.done"]
    added = next(e for e in events if e["type"] == "response.output_item.added")
    assert added["item"]["content"][0]["text"] == ""  # a snapshot, not the growing item


def test_cut_output_is_incomplete() -> None:
    builder = OutputBuilder(summary=False)
    builder.add(_delta(text="abc"))
    builder.close("incomplete")
    assert builder.items[0]["status"] == "incomplete"
