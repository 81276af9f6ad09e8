"""Every validation rule, table-driven, through a real edge (stand-in engine behind it).

Each bad request must get a 400 in OpenAI's envelope naming the offending field.
"""

from __future__ import annotations

import aiohttp
import pytest

from tests.conftest import SCRIPTED_MODEL, RunningStack

M = SCRIPTED_MODEL
USER = [{"role": "user", "content": "hi"}]
CHAT = {"model": M, "messages": USER}
CMPL = {"model": M, "prompt": "hi"}

CHAT_CASES = [
    # (override, param)
    ({"model": ""}, "model"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        "messages[0].content",
    ),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"frequency_penalty": 2.1}, "frequency_penalty"),
    ({"presence_penalty": -2.1}, "presence_penalty"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 63795320333506641920}, "max_tokens"),  # found by schemathesis: was a 500
    ({"top_k": 2**40}, "top_k"),
    ({"logit_bias": {str(2**40): 1}}, "logit_bias"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"n": 0}, "n"),
    ({"n": 1000}, "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"logprobs": False, "top_logprobs": 3}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias.5"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"tool_choice": "required"}, "tool_choice"),
    (
        {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
        "tools[0].function.name",
    ),
    (
        {
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
        },
        "tool_choice",
    ),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    # Tera extras.
    ({"top_k": -2}, "top_k"),
    ({"min_p": 1.5}, "min_p"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"repetition_penalty": 2.5}, "repetition_penalty"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
]

COMPLETION_CASES = [
    ({"prompt": []}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"suffix": "end"}, "suffix"),
    ({"best_of": 3}, "best_of"),
    ({"logprobs": 6}, "logprobs"),
    ({"echo": "yes"}, "echo"),
    ({"max_tokens": 2**32}, "max_tokens"),
    ({"prompt": [2**33]}, "prompt"),
]


async def _post(stack: RunningStack, path: str, body: object) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{stack.base_url}{path}", json=body) as response,
    ):
        return response.status, await response.json()


@pytest.mark.parametrize(("override", "param"), CHAT_CASES)
async def test_chat_validation(
    shared_scripted_stack: RunningStack, override: dict, param: str
) -> None:
    status, body = await _post(shared_scripted_stack, "/chat/completions", {**CHAT, **override})
    assert status == 400, body
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param
    assert body["error"]["message"]


@pytest.mark.parametrize(("override", "param"), COMPLETION_CASES)
async def test_completion_validation(
    shared_scripted_stack: RunningStack, override: dict, param: str
) -> None:
    status, body = await _post(shared_scripted_stack, "/completions", {**CMPL, **override})
    assert status == 400, body
    assert body["error"]["param"] == param


@pytest.mark.parametrize(
    "override",
    [
        {"user": "alice", "seed": 3, "stop": "x", "n": 2, "logprobs": True, "top_logprobs": 2},
        {"some_future_field": {"x": 1}, "store": True, "metadata": {"k": "v"}},
        {
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            ]
        },
        {
            "messages": [
                *USER,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ]
        },
        {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1},
    ],
)
async def test_valid_requests_are_accepted(
    shared_scripted_stack: RunningStack, override: dict
) -> None:
    status, body = await _post(shared_scripted_stack, "/chat/completions", {**CHAT, **override})
    assert status == 200, body
    assert body["choices"]


async def test_completion_prompt_forms(shared_scripted_stack: RunningStack) -> None:
    status, body = await _post(
        shared_scripted_stack,
        "/completions",
        {**CMPL, "prompt": ["a", "b"], "n": 2, "max_tokens": 3},
    )
    assert status == 200
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    status, body = await _post(
        shared_scripted_stack, "/completions", {**CMPL, "prompt": [[1, 2], [3]], "max_tokens": 2}
    )
    assert status == 200 and len(body["choices"]) == 2
    assert body["usage"]["completion_tokens"] == 4
