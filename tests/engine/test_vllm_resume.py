"""The vLLM engine continues a cut stream exactly (GenerateRequest.continuation).

Each test runs a request to the end (the reference), then asks the same engine for its
continuation after the first k tokens, as the router would after a cut, and checks that
what the caller would have seen up to the cut plus the continuation equals the
reference: text, reasoning, tool-call fragments, token ids, logprob offsets, usage and
finish_reason. Temperature 0 throughout.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import jsonschema
import pytest

from services.engine.model_prep import DEFAULT_MODEL_ID
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc
from tests.conftest import PARSERS_MODEL, RunningStack
from tests.e2e.test_tools_structured_reasoning import HERMES_CALL, REASONING, WEATHER_TOOL


@pytest.fixture(scope="module")
def engine(vllm_stack: RunningStack) -> Iterator[pb_grpc.EngineStub]:
    with grpc.insecure_channel(vllm_stack.engine_addresses[0]) as channel:
        yield pb_grpc.EngineStub(channel)


def chat(content: str, max_tokens: int, model: str = DEFAULT_MODEL_ID, **kw) -> pb.GenerateRequest:
    sampling = {"temperature": 0, **kw.pop("s", {})}
    return pb.GenerateRequest(
        model=model,
        chat=pb.ChatInput(messages=[pb.ChatMessage(role="user", content=content)]),
        sampling=pb.SamplingParams(max_tokens=max_tokens, **sampling),
        **kw,
    )


def view(messages: list[pb.GenerateResponse]) -> dict:
    """What a caller makes of a stream (tool-call ids aside: they are random)."""
    v: dict = {"text": "", "reasoning": "", "calls": {}, "ids": [], "finish": 0, "offsets": []}
    for m in messages:
        for c in m.choices:
            v["text"] += c.text
            v["reasoning"] += c.reasoning_text
            v["ids"] += list(c.token_ids)
            v["finish"] = c.finish_reason or v["finish"]
            v["offsets"] += [(lp.token, lp.text_offset) for lp in c.logprobs]
            for t in c.tool_calls:
                name, args, ids = v["calls"].get(t.index, ("", "", 0))
                v["calls"][t.index] = (name + t.name, args + t.arguments, ids + bool(t.id))
        if m.HasField("usage"):
            v["usage"] = (m.usage.prompt_tokens, m.usage.completion_tokens)
            v["reasoning_tokens"] = m.usage.reasoning_tokens
    return v


def resumed(engine, request: pb.GenerateRequest, k: int) -> tuple[dict, dict]:
    """(reference view, view of the first messages up to >= k tokens + continuation)."""
    reference = list(engine.Generate(request, timeout=120))
    seen, tokens = [], 0
    while tokens < k:
        seen.append(reference[len(seen)])
        tokens += sum(len(c.token_ids) for c in seen[-1].choices)
    assert tokens < len(view(reference)["ids"]), "cut before the end"
    again = pb.GenerateRequest()
    again.CopyFrom(request)
    again.continuation.choices.add(index=0, token_ids=view(seen)["ids"])
    return view(reference), view(seen + list(engine.Generate(again, timeout=120)))


def _parted_at(got: dict, want: dict) -> int | None:
    """The first token index where the two outputs differ; None if one is a prefix."""
    pairs = enumerate(zip(got["ids"], want["ids"], strict=False))
    return next((i for i, (a, b) in pairs if a != b), None)


def same(want: dict, got: dict, k: int) -> None:
    """got == want, unless greedy decoding took another branch after the cut: prefill of
    the emitted tokens and step-by-step decode round differently in bf16 on CPU, so a
    near-tie can go the other way (seen on some runs). That is reported as xfail; a
    divergence before the cut, or any other difference, fails."""
    if got["ids"] != want["ids"]:
        d = _parted_at(got, want)
        if d is None:  # one is a prefix of the other: they part where the shorter ends
            d = min(len(got["ids"]), len(want["ids"]))
        assert d >= k, f"diverged at {d}, before the cut at {k}"
        pytest.xfail(f"greedy near-tie: outputs diverged at token {d} after a cut at {k}")
    assert got == want


@pytest.mark.parametrize("k", [1, 2, 17, 39])
def test_text_continues_exactly(engine, k: int) -> None:
    want, got = resumed(engine, chat("Write a short poem about the sea.", 40), k)
    same(want, got, k)


def test_multibyte_character_split_at_the_cut(engine) -> None:
    request = pb.GenerateRequest(
        model=DEFAULT_MODEL_ID,
        prompt=pb.PromptInput(text="Emojis: 🌊🌞🍀🌊🌞🍀🌊🌞🍀🌊"),
        sampling=pb.SamplingParams(temperature=0, max_tokens=16),
    )
    reference = list(engine.Generate(request, timeout=120))
    # A message with tokens but no text holds an incomplete UTF-8 character.
    tokens = [sum(len(c.token_ids) for c in m.choices) for m in reference]
    split = [i for i, m in enumerate(reference) if tokens[i] and not m.choices[0].text]
    assert split, "the reference splits no character across tokens"
    k = sum(tokens[: split[0] + 1])
    want, got = resumed(engine, request, k)
    assert "\ufffd" not in got["text"]
    same(want, got, k)


def test_stop_string_straddling_the_cut(engine) -> None:
    free = view(list(engine.Generate(chat("Count from 1 to 20.", 40), timeout=120)))
    stop = free["text"][12:18]  # the reference's text around token 6
    request = chat("Count from 1 to 20.", 40, s={"stop": [stop]})
    want, got = resumed(engine, request, 6)
    assert want["text"] == free["text"][:12] and want["finish"] == pb.FINISH_REASON_STOP
    same(want, got, 6)


def test_min_tokens_hold_across_the_cut(engine) -> None:
    want, got = resumed(engine, chat("Reply with one word.", 40, s={"min_tokens": 24}), 3)
    assert want["usage"][1] >= 24 and got["usage"][1] >= 24
    same(want, got, 3)


def test_frequency_and_presence_penalties_count_the_emitted_tokens(engine) -> None:
    penalties = {"frequency_penalty": 1.5, "presence_penalty": 1.0}
    want, got = resumed(engine, chat("Write a short poem about the sea.", 40, s=penalties), 12)
    if got["ids"] != want["ids"]:
        # Without the emitted tokens' penalties the outputs part at once (token 14 here)
        # on a token emitted before, which the continuation no longer penalises. Where
        # neither side's token was emitted before, no penalty differs between them: the
        # raw logits rounded another way (bf16 on CPU; token 17 in one CI run).
        d = _parted_at(got, want)
        assert d is not None and d >= 12, (d, got, want)
        assert not {got["ids"][d], want["ids"][d]} & set(want["ids"][:d]), (d, got, want)
        pytest.xfail(f"near-tie of unpenalised tokens at {d} after a cut at 12")
    assert got == want


def test_completion_with_echo_and_logprobs(engine) -> None:
    request = pb.GenerateRequest(
        model=DEFAULT_MODEL_ID,
        prompt=pb.PromptInput(text="Monday, Tuesday, Wednesday,"),
        sampling=pb.SamplingParams(temperature=0, max_tokens=20),
        output=pb.OutputOptions(echo=True, logprobs=True, top_logprobs=2),
    )
    want, got = resumed(engine, request, 6)
    assert got["text"].startswith("Monday, Tuesday, Wednesday,")
    same(want, got, 6)


def test_json_schema_continues_the_grammar(engine) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    structured = pb.StructuredOutput(json_schema=json.dumps(schema))
    want, got = resumed(engine, chat("Describe a person as JSON.", 60, structured=structured), 5)
    jsonschema.validate(json.loads(got["text"]), schema)
    same(want, got, 5)


def test_tool_call_deltas_continue(engine) -> None:
    request = chat(
        "What is the weather in Paris?",
        60,
        model=PARSERS_MODEL,
        structured=pb.StructuredOutput(regex=HERMES_CALL),
        tools=pb.ToolOptions(
            tools=[
                pb.Tool(
                    name="get_weather",
                    parameters_json=json.dumps(WEATHER_TOOL["function"]["parameters"]),
                )
            ]
        ),
    )
    request.chat.chat_template_kwargs_json = json.dumps({"enable_thinking": False})
    want, got = resumed(engine, request, 12)  # inside the arguments
    for v in (want, got):
        assert v["calls"] == {0: ("get_weather", '{"city": "Paris"}', 1)}
        assert v["finish"] == pb.FINISH_REASON_TOOL_CALLS
    same(want, got, 12)


def test_reasoning_deltas_continue(engine) -> None:
    request = chat(
        "What is the weather in Paris?",
        60,
        model=PARSERS_MODEL,
        structured=pb.StructuredOutput(regex=REASONING),
    )
    want, got = resumed(engine, request, 4)  # inside the thinking
    for v in (want, got):
        assert v["reasoning"] and "think>" not in v["reasoning"] + v["text"]
        assert v["text"].endswith(".") and v["reasoning_tokens"] > 0
    same(want, got, 4)


def test_n_above_1_is_refused_explicitly(engine) -> None:
    request = chat("Hi", 10, s={"n": 2, "temperature": 0.7})
    request.continuation.choices.add(index=0, token_ids=[28])
    request.continuation.choices.add(index=1, token_ids=[28])
    with pytest.raises(grpc.RpcError) as failure:
        list(engine.Generate(request, timeout=60))
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
