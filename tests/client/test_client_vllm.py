"""tera_client against the router and a real vLLM engine (one stack for the session)."""

from __future__ import annotations

import asyncio
import json
import time

import jsonschema
import pytest
import tera_client as tc

from services.engine.model_prep import DEFAULT_MODEL_ID
from tests.client.conftest import router_address
from tests.conftest import RunningStack

ASK = [{"role": "user", "content": "What time is it in Paris?"}]
ZONE = {
    "type": "object",
    "properties": {"zone": {"type": "string", "maxLength": 10}},
    "required": ["zone"],
    "additionalProperties": False,
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": ZONE}}
OTHER_TOOL = {"type": "function", "function": {"name": "get_date", "parameters": ZONE}}


@pytest.fixture(scope="module")
def client(vllm_stack: RunningStack) -> tc.TeraClient:
    with tc.TeraClient(router_address(vllm_stack), timeout=120) as c:
        yield c


def _wait_idle(stack: RunningStack, timeout_s: float = 10) -> int:
    deadline = time.monotonic() + timeout_s
    while (in_flight := stack.engine_load().in_flight) and time.monotonic() < deadline:
        time.sleep(0.1)
    return in_flight


def test_streaming_chat_yields_deltas_then_usage(client: tc.TeraClient) -> None:
    with client.generate(DEFAULT_MODEL_ID, messages=ASK, max_tokens=12) as stream:
        deltas = list(stream)
    assert len([d for d in deltas if d.text]) > 1, "streamed, not one block"
    assert deltas[-1].finish_reason in ("stop", "length")
    assert all(d.finish_reason is None for d in deltas[:-1])
    assert stream.usage and stream.usage.completion_tokens == sum(d.num_tokens for d in deltas)


def test_completion_from_a_prompt(client: tc.TeraClient) -> None:
    answer = client.complete(DEFAULT_MODEL_ID, prompt="The capital of France is", max_tokens=5)
    assert answer.text and answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage and answer.usage.prompt_tokens > 0


def test_forced_tool_choice_calls_that_tool(client: tc.TeraClient) -> None:
    answer = client.complete(
        DEFAULT_MODEL_ID,
        messages=ASK,
        tools=[OTHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=60,
        temperature=0,
    )
    calls = answer.choices[0].tool_calls
    assert [c.name for c in calls] == ["get_time"]
    jsonschema.validate(calls[0].parsed_arguments(), ZONE)


def test_structured_output_follows_the_schema(client: tc.TeraClient) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}}
    schema |= {"required": ["city"], "additionalProperties": False}
    answer = client.complete(
        DEFAULT_MODEL_ID,
        messages=[{"role": "user", "content": "Name a city in JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
        max_tokens=40,
        temperature=0,
    )
    jsonschema.validate(json.loads(answer.text), schema)


def test_deadline_exceeded_is_a_timeout_error(
    client: tc.TeraClient, vllm_stack: RunningStack
) -> None:
    with pytest.raises(tc.APITimeoutError):
        client.complete(DEFAULT_MODEL_ID, prompt="Count:", max_tokens=2000, timeout=0.5)
    assert _wait_idle(vllm_stack) == 0, "the deadline ends the work in the engine"


def test_cancel_aborts_generation_in_the_engine(
    client: tc.TeraClient, vllm_stack: RunningStack
) -> None:
    stream = client.generate(DEFAULT_MODEL_ID, prompt="Count:", max_tokens=2000, ignore_eos=True)
    first = next(iter(stream))
    assert first.finish_reason is None
    assert vllm_stack.engine_load().in_flight == 1
    stream.cancel()
    assert list(stream) == []  # a cancelled stream just ends
    assert _wait_idle(vllm_stack, timeout_s=5) == 0


async def test_cancelling_the_task_aborts_in_the_engine(vllm_stack: RunningStack) -> None:
    async with tc.AsyncTeraClient(router_address(vllm_stack)) as client:
        started = asyncio.Event()

        async def read() -> None:
            async for _ in client.generate(DEFAULT_MODEL_ID, prompt="Count:", max_tokens=2000):
                started.set()

        task = asyncio.create_task(read())
        await asyncio.wait_for(started.wait(), 60)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await asyncio.to_thread(_wait_idle, vllm_stack, 5) == 0


async def test_async_streaming_chat(vllm_stack: RunningStack) -> None:
    async with tc.AsyncTeraClient(router_address(vllm_stack), timeout=120) as client:
        models = {m.id for m in await client.list_models()}
        assert DEFAULT_MODEL_ID in models
        answer = await client.complete(DEFAULT_MODEL_ID, messages=ASK, max_tokens=8)
    assert answer.text and answer.usage and answer.usage.completion_tokens <= 8
