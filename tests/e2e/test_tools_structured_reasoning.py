"""Tools, structured output and reasoning through the real engine (vLLM's parsers).

The model is tiny, so formats are forced with structured outputs: the test decides what
the model must write, and checks that Tera turns it into OpenAI's fields.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
from openai import OpenAI
from pydantic import BaseModel, Field

from services.engine.model_prep import DEFAULT_MODEL_ID
from tests.conftest import PARSERS_MODEL, RunningStack

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 10}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
HERMES_CALL = r'<tool_call>\{"name": "get_weather", "arguments": \{"city": "Paris"\}\}</tool_call>'


@pytest.fixture(scope="module")
def client(vllm_stack: RunningStack) -> OpenAI:
    return OpenAI(base_url=vllm_stack.base_url, api_key="sk-tera-local", max_retries=0)


def _schema(tool: dict) -> dict:
    return tool["function"]["parameters"]


@pytest.mark.parametrize("stream", [False, True])
def test_required_yields_valid_calls_on_a_model_without_tool_format(
    client: OpenAI, stream: bool
) -> None:
    kwargs = {
        "model": DEFAULT_MODEL_ID,
        "messages": ASK,
        "tools": [WEATHER_TOOL, TIME_TOOL],
        "tool_choice": "required",
        "max_tokens": 120,
        "temperature": 0,
    }
    calls, finish = _calls(client, kwargs, stream)
    assert finish == "tool_calls"
    assert calls, "required must produce at least one call"
    by_name = {"get_weather": WEATHER_TOOL, "get_time": TIME_TOOL}
    for call in calls:
        assert call["id"] and call["type"] == "function"
        jsonschema.validate(
            json.loads(call["function"]["arguments"]), _schema(by_name[call["function"]["name"]])
        )


@pytest.mark.parametrize("stream", [False, True])
def test_named_function_is_called_with_valid_arguments(client: OpenAI, stream: bool) -> None:
    kwargs = {
        "model": DEFAULT_MODEL_ID,
        "messages": ASK,
        "tools": [WEATHER_TOOL, TIME_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_time"}},
        "max_tokens": 60,
        "temperature": 0,
    }
    calls, finish = _calls(client, kwargs, stream)
    assert finish == "stop"  # as OpenAI does for a named tool choice
    assert [c["function"]["name"] for c in calls] == ["get_time"]
    jsonschema.validate(json.loads(calls[0]["function"]["arguments"]), _schema(TIME_TOOL))


def test_tool_choice_none_answers_in_text(client: OpenAI) -> None:
    r = client.chat.completions.create(
        model=DEFAULT_MODEL_ID,
        messages=ASK,
        tools=[WEATHER_TOOL],
        tool_choice="none",
        max_tokens=10,
    )
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("stream", [False, True])
def test_auto_uses_the_models_tool_parser(client: OpenAI, stream: bool) -> None:
    kwargs = {
        "model": PARSERS_MODEL,
        "messages": ASK,
        "tools": [WEATHER_TOOL],
        "tool_choice": "auto",
        "max_tokens": 60,
        "temperature": 0,
        # Tera extra: make the tiny model write the hermes format.
        "extra_body": {
            "structured_outputs": {"regex": HERMES_CALL},
            "chat_template_kwargs": {"enable_thinking": False},
        },
    }
    calls, finish = _calls(client, kwargs, stream)
    assert finish == "tool_calls"
    assert len(calls) == 1
    assert calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}


def test_streamed_tool_call_deltas_carry_index(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=PARSERS_MODEL,
        messages=ASK,
        tools=[WEATHER_TOOL],
        max_tokens=60,
        temperature=0,
        stream=True,
        extra_body={
            "structured_outputs": {"regex": HERMES_CALL},
            "chat_template_kwargs": {"enable_thinking": False},
        },
    )
    deltas = [tc for c in stream if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas and all(d.index == 0 for d in deltas)
    assert deltas[0].id and deltas[0].type == "function" and deltas[0].function.name
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"city": "Paris"}


REASONING = r"<think>[a-z ]{3,30}</think>[A-Z][a-z ]{3,30}\."


def test_reasoning_goes_to_reasoning_content(client: OpenAI) -> None:
    r = client.chat.completions.create(
        model=PARSERS_MODEL,
        messages=ASK,
        max_tokens=60,
        temperature=0,
        extra_body={"structured_outputs": {"regex": REASONING}},
    )
    message = r.choices[0].message.model_dump()
    assert message["reasoning_content"] and message["reasoning"] == message["reasoning_content"]
    assert "<think>" not in message["content"] and "</think>" not in message["content"]
    assert message["content"].endswith(".")
    assert r.usage is not None and r.usage.completion_tokens_details is not None
    assert r.usage.completion_tokens_details.reasoning_tokens > 0


def test_reasoning_streams_as_reasoning_deltas(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=PARSERS_MODEL,
        messages=ASK,
        max_tokens=60,
        temperature=0,
        stream=True,
        extra_body={"structured_outputs": {"regex": REASONING}},
    )
    deltas = [c.choices[0].delta.model_dump() for c in stream if c.choices]
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
    content = "".join(d.get("content") or "" for d in deltas)
    assert reasoning.strip() and "think>" not in reasoning
    assert content.endswith(".") and "think>" not in content


def test_json_object(client: OpenAI) -> None:
    # Several seeded samples: the tiny model may ramble inside an object until
    # max_tokens, but every sample that finishes must be a JSON object.
    r = client.chat.completions.create(
        model=DEFAULT_MODEL_ID,
        max_tokens=200,
        temperature=0.7,
        seed=7,
        n=4,
        messages=[
            {"role": "user", "content": 'Return a JSON object with one key "ok" set to true.'}
        ],
        response_format={"type": "json_object"},
    )
    finished = [c for c in r.choices if c.finish_reason == "stop"]
    assert finished, [c.message.content for c in r.choices]
    for choice in finished:
        assert isinstance(json.loads(choice.message.content or ""), dict)
    assert all((c.message.content or "").lstrip().startswith("{") for c in r.choices)


class City(BaseModel):
    name: str = Field(max_length=20)
    country: str = Field(max_length=20)
    population: int = Field(ge=0, le=10**9)


def test_json_schema_with_sdk_parse(client: OpenAI) -> None:
    r = client.chat.completions.parse(
        model=DEFAULT_MODEL_ID,
        max_tokens=120,
        temperature=0,
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format=City,
    )
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, City)
    jsonschema.validate(json.loads(r.choices[0].message.content or ""), City.model_json_schema())


def _calls(client: OpenAI, kwargs: dict, stream: bool) -> tuple[list[dict], str | None]:
    if not stream:
        r = client.chat.completions.create(**kwargs)
        message = r.choices[0].message
        return [c.model_dump() for c in message.tool_calls or []], r.choices[0].finish_reason
    calls: dict[int, dict] = {}
    finish = None
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for d in choice.delta.tool_calls or []:
            call = calls.setdefault(
                d.index, {"id": None, "type": None, "function": {"name": "", "arguments": ""}}
            )
            call["id"] = call["id"] or d.id
            call["type"] = call["type"] or d.type
            if d.function:
                call["function"]["name"] += d.function.name or ""
                call["function"]["arguments"] += d.function.arguments or ""
    return [calls[i] for i in sorted(calls)], finish
