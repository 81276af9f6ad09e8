"""The Responses API through the official SDK on the real stack (vLLM engine).

The model is tiny, so tool calls, JSON and reasoning are forced (tool_choice, text.format,
structured outputs): the tests check that Tera turns what the model wrote into
OpenAI's items and events.
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel, Field

from services.engine.model_prep import DEFAULT_MODEL_ID
from tests.conftest import PARSERS_MODEL, RunningStack

MODEL = DEFAULT_MODEL_ID
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
REASONING = r"<think>[a-z ]{3,30}</think>[A-Z][a-z ]{3,30}\."


@pytest.fixture(scope="module")
def client(vllm_stack: RunningStack) -> OpenAI:
    return OpenAI(base_url=vllm_stack.base_url, api_key="sk-tera-local", max_retries=0)


def test_plain_text_with_instructions(client: OpenAI) -> None:
    r = client.responses.create(
        model=MODEL,
        instructions="Answer in one short sentence.",
        input="What is the capital of France?",
        max_output_tokens=40,
        temperature=0,
        extra_body={"top_k": 5, "min_p": 0.01, "repetition_penalty": 1.1},
    )
    assert r.object == "response" and r.model == MODEL and r.instructions
    assert r.status in ("completed", "incomplete") and r.output_text.strip()
    message = r.output[0]
    assert message.type == "message" and message.role == "assistant"
    assert r.usage is not None and r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


def test_max_output_tokens_gives_incomplete(client: OpenAI) -> None:
    r = client.responses.create(model=MODEL, input="Tell me a story.", max_output_tokens=5)
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage is not None and r.usage.output_tokens == 5


def test_stream_events_in_order(client: OpenAI) -> None:
    kwargs = {"model": MODEL, "input": "Say hello.", "max_output_tokens": 16, "temperature": 0}
    whole = client.responses.create(**kwargs, store=False)
    events = list(client.responses.create(**kwargs, stream=True))
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        f"response.{whole.status}",
    ]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert text == whole.output_text
    assert events[-1].response.output_text == text  # type: ignore[union-attr]


def test_stream_helper_final_response(client: OpenAI) -> None:
    # The helper wants response.completed: force a short answer that finishes.
    forced = {"structured_outputs": {"regex": r"Hi there\."}}
    with client.responses.stream(
        model=MODEL, input="Say hi.", max_output_tokens=20, extra_body=forced
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text


async def test_async_client(vllm_stack: RunningStack) -> None:
    aclient = AsyncOpenAI(base_url=vllm_stack.base_url, api_key="sk-tera-local", max_retries=0)
    r = await aclient.responses.create(model=MODEL, input="Hi", max_output_tokens=4)
    assert (await aclient.responses.retrieve(r.id)).output_text == r.output_text
    await aclient.close()


@pytest.mark.parametrize("stream", [False, True])
def test_function_call_round_trip(client: OpenAI, stream: bool) -> None:
    kwargs = {
        "model": MODEL,
        "input": "What is the weather in Paris?",
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "max_output_tokens": 60,
        "temperature": 0,
    }
    if stream:
        with client.responses.stream(**kwargs) as s:  # type: ignore[arg-type]
            types = [e.type for e in s]
            first = s.get_final_response()
        assert "response.function_call_arguments.delta" in types
        assert "response.function_call_arguments.done" in types
    else:
        first = client.responses.create(**kwargs)  # type: ignore[arg-type]
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].call_id
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER["parameters"])
    answer = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 21C"}
        ],
        tools=[WEATHER],
        tool_choice="none",
        max_output_tokens=30,
    )
    assert answer.output[0].type == "message" and answer.output_text
    assert answer.previous_response_id == first.id


def test_three_turns_with_previous_response_id(client: OpenAI) -> None:
    previous = None
    for word in ("apple", "banana", "cherry"):
        r = client.responses.create(
            model=MODEL,
            input=f"Remember the word {word}.",
            previous_response_id=previous,
            max_output_tokens=8,
        )
        previous = r.id
    assert r.usage is not None and r.usage.input_tokens > 30  # three turns in the prompt
    items = client.responses.input_items.list(r.id)
    assert len(items.data) == 1  # this turn's own input


class City(BaseModel):
    name: str = Field(max_length=20)
    country: str = Field(max_length=20)
    population: int = Field(ge=0, le=10**9)


def test_json_schema_with_sdk_parse(client: OpenAI) -> None:
    r = client.responses.parse(
        model=MODEL,
        input="Describe Paris as JSON.",
        text_format=City,
        max_output_tokens=120,
        temperature=0,
    )
    assert isinstance(r.output_parsed, City)
    jsonschema.validate(json.loads(r.output_text), City.model_json_schema())


def test_json_object(client: OpenAI) -> None:
    r = client.responses.create(
        model=MODEL,
        input='Return a JSON object with one key "ok" set to true.',
        text={"format": {"type": "json_object"}},
        max_output_tokens=200,
        temperature=0,
    )
    if r.status == "completed":
        assert isinstance(json.loads(r.output_text), dict)


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_item_and_summary(client: OpenAI, stream: bool) -> None:
    kwargs = {
        "model": PARSERS_MODEL,
        "input": "What is the weather in Paris?",
        "reasoning": {"effort": "low", "summary": "auto"},
        "max_output_tokens": 60,
        "temperature": 0,
        "extra_body": {"structured_outputs": {"regex": REASONING}},
    }
    if stream:
        events = list(client.responses.create(**kwargs, stream=True))  # type: ignore[call-overload]
        types = [e.type for e in events]
        assert "response.reasoning_text.delta" in types
        assert "response.reasoning_summary_text.delta" in types
        r = events[-1].response
    else:
        r = client.responses.create(**kwargs)  # type: ignore[call-overload]
    kinds = [item.type for item in r.output]
    assert kinds == ["reasoning", "message"]
    reasoning = r.output[0]
    assert reasoning.content and reasoning.content[0].text.strip()
    assert reasoning.summary and reasoning.summary[0].text == reasoning.content[0].text
    assert "think>" not in r.output_text and r.output_text.endswith(".")
    assert r.usage is not None and r.usage.output_tokens_details.reasoning_tokens > 0


def test_truncation_on_the_real_tokenizer(client: OpenAI) -> None:
    """Two 1,200-token turns exceed the 2,048-token context: "auto" drops the first
    (the instructions stay), "disabled" is vLLM's context-length 400."""
    long = "apple " * 1200
    kwargs = {"model": MODEL, "instructions": "Count.", "max_output_tokens": 4}
    first = client.responses.create(**kwargs, input=long)  # type: ignore[call-overload]
    assert first.usage is not None and 1200 < first.usage.input_tokens < 1400
    follow = {**kwargs, "input": long, "previous_response_id": first.id}
    r = client.responses.create(**follow, truncation="auto")  # type: ignore[call-overload]
    assert r.usage is not None and r.usage.input_tokens < first.usage.input_tokens + 20
    with pytest.raises(openai.BadRequestError, match="maximum context length is 2048"):
        client.responses.create(**follow)  # type: ignore[call-overload]


def test_output_text_logprobs(client: OpenAI) -> None:
    kwargs = {
        "model": MODEL,
        "input": "Say hello.",
        "max_output_tokens": 5,
        "temperature": 0,
        "include": ["message.output_text.logprobs"],
        "top_logprobs": 3,
    }
    part = client.responses.create(**kwargs).output[0].content[0]  # type: ignore[call-overload]
    assert part.logprobs and "".join(lp.token for lp in part.logprobs) == part.text
    for lp in part.logprobs:
        assert lp.logprob <= 0 and len(lp.top_logprobs) == 3
        assert lp.top_logprobs[0].logprob == pytest.approx(lp.logprob, abs=1e-3)
    events = list(client.responses.create(**kwargs, stream=True))  # type: ignore[call-overload]
    streamed = [
        lp.token for e in events if e.type == "response.output_text.delta" for lp in e.logprobs
    ]
    assert streamed == [lp.token for lp in part.logprobs]
