"""Tool-call and reasoning streams across a SIGKILL, through the whole stack, read with
the openai SDK: edge + router + two stand-in engine processes that parse their fixed
answer as vLLM's tool and reasoning parsers would (backends/scripted_markup.py).

The reference is the same request on the same stack before the kill. The killed stream
must read the same: one tool call with one id and one name, arguments byte-equal to the
reference (and valid JSON); reasoning_content and content with no piece repeated or
missing; the same finish_reason and usage. The Responses API's items are built at the
edge, statefully, from the one stream the router relays: across the kill they must come
out as in the unkilled run (same items, same event sequence, arguments deltas adding up).
Last, replicas that cut after exactly k tokens put the cut at each place the parsers
hold state, and the stream must read as the uncut stand-in in process does.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable

import openai
import pytest

from services.common.wire import FINISH_REASON_NAMES
from services.engine.backends.scripted import ScriptedBackend
from services.engine.config import EngineConfig
from services.proto_gen.tera.v1 import engine_pb2 as pb
from tests.conftest import SCRIPTED_MODEL, RunningStack
from tests.faults.fleet import router_metric

RATE = 10  # tokens/s per stream: the answer takes 2-3 s, the kill lands well inside it

TOOL_CALL = [
    *("Let", " me", " look", " that", " up", "."),
    *("<tool_", "call>get_", "weather\n"),
    *(
        '{"city"',
        ': "Pa',
        'ris", ',
        '"unit": ',
        '"cel',
        "sius",
        '", ',
        '"days": ',
        "[1",
        ", 2",
        ", 3",
        "]}",
    ),
    "</tool_call>",
]
REASONING = [
    *("<think>", "The", " user", " wants", " a", " short", " story", " about", " a"),
    *(" fox", ";", " keep", " it", " to", " one", " line", ".</th", "ink>"),
    *("A", " fox", " outran", " the", " dawn", " and", " slept", " till", " noon", "."),
]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def _stack(fleet: Callable[..., RunningStack], pieces: list[str]) -> RunningStack:
    script = {"pieces": pieces, "markup": True, "tokens_per_second": RATE}
    return fleet([script, script])


class Transcript:
    """Everything the client saw of one stream, delta by delta."""

    def __init__(self) -> None:
        self.content = ""
        self.reasoning = ""
        self.calls: dict[int, dict] = {}  # index -> {ids, names, arguments}
        self.finish: str | None = None
        self.usage: tuple[int, int] | None = None

    def add(self, chunk) -> None:
        if chunk.usage:
            self.usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        for choice in chunk.choices:
            delta = choice.delta
            self.content += delta.content or ""
            self.reasoning += getattr(delta, "reasoning_content", None) or ""
            for call in delta.tool_calls or ():
                seen = self.calls.setdefault(call.index, {"ids": [], "names": [], "arguments": ""})
                seen["ids"] += [call.id] if call.id else []
                name = call.function.name if call.function else None
                seen["names"] += [name] if name else []
                seen["arguments"] += (call.function.arguments or "") if call.function else ""
            self.finish = choice.finish_reason or self.finish

    def snapshot(self) -> dict:
        return {"content": self.content, "reasoning": self.reasoning, "calls": len(self.calls)}


async def _stream(
    stack: RunningStack, body: dict, kill_when: Callable[[Transcript], bool] | None = None
) -> tuple[Transcript, dict | None]:
    """Streams body; kills the engine holding the stream the first time kill_when holds.
    Returns the transcript and what the client had seen at the kill."""
    client = openai.AsyncOpenAI(base_url=stack.base_url, api_key="sk-local", max_retries=0)
    seen, at_kill = Transcript(), None
    stream = await client.chat.completions.create(
        model=SCRIPTED_MODEL,
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=200,
        **body,
    )
    async for chunk in stream:
        seen.add(chunk)
        if kill_when and at_kill is None and kill_when(seen):
            at_kill = seen.snapshot()
            loads = await asyncio.gather(*(asyncio.to_thread(stack.engine_load, i) for i in (0, 1)))
            holding = [i for i, load in enumerate(loads) if load.in_flight]
            assert len(holding) == 1, "exactly one engine holds the stream"
            stack.stack.engines[holding[0]].kill_group(signal.SIGKILL)
    await client.close()
    return seen, at_kill


async def test_tool_call_stream_survives_a_sigkill_mid_arguments(fleet) -> None:
    stack = _stack(fleet, TOOL_CALL)
    body = {
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [WEATHER_TOOL],
    }
    want, _ = await _stream(stack, body)
    assert list(want.calls) == [0] and want.finish == "tool_calls", "the reference made a call"

    def mid_arguments(t: Transcript) -> bool:
        return 0 in t.calls and len(t.calls[0]["arguments"]) >= 10

    got, at_kill = await _stream(stack, body, kill_when=mid_arguments)
    assert at_kill is not None, "the kill came while the call's arguments were streaming"
    assert got.content == want.content == "Let me look that up."
    assert list(got.calls) == [0], "exactly one tool call"
    call = got.calls[0]
    assert len(call["ids"]) == 1 and call["ids"][0].startswith("call_"), call["ids"]
    assert call["names"] == ["get_weather"]
    assert call["arguments"] == want.calls[0]["arguments"]
    assert json.loads(call["arguments"]) == {"city": "Paris", "unit": "celsius", "days": [1, 2, 3]}
    assert (got.finish, got.usage) == (want.finish, want.usage)
    assert router_metric(stack, "tera_router_resumes_total", reason="unavailable") == 1


async def test_reasoning_stream_survives_a_sigkill_mid_reasoning(fleet) -> None:
    stack = _stack(fleet, REASONING)
    body = {"messages": [{"role": "user", "content": "A story about a fox, please."}]}
    want, _ = await _stream(stack, body)
    assert want.reasoning == "The user wants a short story about a fox; keep it to one line."
    assert want.content == "A fox outran the dawn and slept till noon."

    def mid_reasoning(t: Transcript) -> bool:
        return len(t.reasoning) >= 12

    got, at_kill = await _stream(stack, body, kill_when=mid_reasoning)
    assert at_kill is not None and at_kill["content"] == "", "killed before any content"
    assert got.reasoning == want.reasoning
    assert got.content == want.content
    assert (got.finish, got.usage) == (want.finish, want.usage) == ("stop", want.usage)
    assert router_metric(stack, "tera_router_resumes_total", reason="unavailable") == 1


# Reasoning, a sentence, then a call: three output items for the Responses API.
AGENT = [
    *REASONING[:9],
    "</think>",
    *TOOL_CALL,
]


async def _response_events(
    stack: RunningStack, kill_when: Callable[[list], bool] | None = None
) -> tuple[list, bool]:
    """A streamed Responses call's events; kills the engine holding it once kill_when
    holds over the events so far."""
    client = openai.AsyncOpenAI(base_url=stack.base_url, api_key="sk-local", max_retries=0)
    tool = {"type": "function", **WEATHER_TOOL["function"]}
    stream = await client.responses.create(
        model=SCRIPTED_MODEL,
        input="Weather in Paris?",
        tools=[tool],
        max_output_tokens=200,
        stream=True,
        store=False,
    )
    events, killed = [], False
    async for event in stream:
        events.append(event)
        if kill_when and not killed and kill_when(events):
            loads = await asyncio.gather(*(asyncio.to_thread(stack.engine_load, i) for i in (0, 1)))
            holding = [i for i, load in enumerate(loads) if load.in_flight]
            assert len(holding) == 1, "exactly one engine holds the stream"
            stack.stack.engines[holding[0]].kill_group(signal.SIGKILL)
            killed = True
    await client.close()
    return events, killed


def _shape(events: list) -> tuple[list, list]:
    """The event types in order, a run of deltas as one (how many tokens a message holds
    depends on timing), and the final output items without their ids."""
    types = [e.type for e in events]
    types = [t for i, t in enumerate(types) if not (t.endswith(".delta") and types[i - 1] == t)]
    final = events[-1].response.output
    items = [
        {k: v for k, v in item.model_dump().items() if k not in ("id", "call_id")} for item in final
    ]
    return types, items


async def test_responses_stream_survives_a_sigkill_mid_function_call(fleet) -> None:
    """The edge builds the Responses API's items statefully from one relayed stream; a
    resume behind it must leave items, events and arguments as in the unkilled run."""
    stack = _stack(fleet, AGENT)
    want, _ = await _response_events(stack)

    def mid_arguments(events: list) -> bool:
        return any(e.type == "response.function_call_arguments.delta" for e in events)

    got, killed = await _response_events(stack, kill_when=mid_arguments)
    assert killed
    assert got[-1].type == "response.completed", got[-1]
    assert _shape(got) == _shape(want)
    kinds = [item.type for item in got[-1].response.output]
    assert kinds == ["reasoning", "message", "function_call"]
    call = got[-1].response.output[-1]
    deltas = "".join(e.delta for e in got if e.type == "response.function_call_arguments.delta")
    assert deltas == call.arguments
    assert json.loads(call.arguments) == {"city": "Paris", "unit": "celsius", "days": [1, 2, 3]}
    assert [e.sequence_number for e in got] == list(range(len(got)))
    assert router_metric(stack, "tera_router_resumes_total", reason="unavailable") == 1


async def _uncut(pieces: list[str]) -> Transcript:
    """The stand-in engine in process, uncut, as the client would read it."""
    backend = ScriptedBackend(
        EngineConfig(backend="scripted", scripted={"pieces": pieces, "markup": True})
    )
    request = pb.GenerateRequest(
        chat=pb.ChatInput(messages=[pb.ChatMessage(role="user", content="Go.")]),
        sampling=pb.SamplingParams(max_tokens=200),
    )
    seen = Transcript()
    async for message in backend.generate(request):
        for c in message.choices:
            seen.content += c.text
            seen.reasoning += c.reasoning_text
            for call in c.tool_calls:
                got = seen.calls.setdefault(call.index, {"ids": [], "names": [], "arguments": ""})
                got["ids"] += [call.id] if call.id else []
                got["names"] += [call.name] if call.name else []
                got["arguments"] += call.arguments
            if c.finish_reason:
                seen.finish = FINISH_REASON_NAMES[c.finish_reason]
        if message.HasField("usage"):
            seen.usage = (message.usage.prompt_tokens, message.usage.completion_tokens)
    return seen


@pytest.mark.parametrize(
    ("script", "k"),
    [
        ("tool", 7),  # "<tool_" held back: a marker's start
        ("tool", 8),  # inside the call's name, not yet sent
        ("tool", 9),  # id and name sent, no arguments yet
        ("tool", 11),  # mid-arguments
        ("reasoning", 1),  # "<think>" alone
        ("reasoning", 17),  # ".</th": the closing marker split
        ("reasoning", 18),  # reasoning closed, no content yet
    ],
    ids=lambda v: str(v),
)
async def test_cut_at_each_parser_state_reads_as_the_uncut_stream(
    fleet, script: str, k: int
) -> None:
    """Replica A cuts every call after exactly k tokens, B and C never do. Of three
    requests round robin sends at least one to A first (cut there, resumed on B or C);
    every stream must read as the uncut stand-in does."""
    pieces = TOOL_CALL if script == "tool" else REASONING
    clean = {"pieces": pieces, "markup": True, "tokens_per_second": 200}
    stack = fleet([{**clean, "fail_after_tokens": k}, clean, clean])
    body = {"messages": [{"role": "user", "content": "Go."}]}
    if script == "tool":
        body["tools"] = [WEATHER_TOOL]
    want = _without_ids(await _uncut(pieces))
    for _ in range(3):
        got, _ = await _stream(stack, body)
        assert _without_ids(got) == want
    assert router_metric(stack, "tera_router_resumes_total", reason="internal") >= 1


def _without_ids(seen: Transcript) -> dict:
    """The transcript, each call's one id replaced (ids are fresh per stream)."""
    for call in seen.calls.values():
        assert len(call["ids"]) == 1 and len(call["names"]) == 1, call
    calls = {i: {**c, "ids": ["<id>"]} for i, c in seen.calls.items()}
    return {**seen.__dict__, "calls": calls}
