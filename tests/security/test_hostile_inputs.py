"""Hostile inputs through the real edge, router and vLLM engine (mutual TLS on): each
is a clean 4xx with a bounded message naming the parameter, never a 429 or a 5xx, and
never the input echoed back (nor into gRPC trailers, where it once blew the metadata
limit: a 100,000-entry logit_bias came back as 429 "received metadata size exceeds")."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from services.common.bounded import MAX_MESSAGE_CHARS
from services.engine.model_prep import DEFAULT_MODEL_ID
from tests.conftest import RunningStack

BIG = 200_000
HUGE_SCHEMA = {
    "type": "object",
    "properties": {f"p{i}_{'x' * 20}": {"type": "no-such-type"} for i in range(20_000)},
}
# (name, endpoint, body fields, expected status, expected param prefix)
CASES: list[tuple[str, str, dict[str, Any], int, str | None]] = [
    (
        "logit_bias 100k out-of-vocab entries",
        "chat",
        {"logit_bias": {str(i): 1 for i in range(100_000, 200_000)}},
        400,
        "logit_bias",
    ),
    (
        "logit_bias 100k entries (completions)",
        "completions",
        {"logit_bias": {str(i): 1 for i in range(100_000, 200_000)}},
        400,
        "logit_bias",
    ),
    ("logit_bias huge key", "chat", {"logit_bias": {"k" * BIG: 1}}, 400, "logit_bias"),
    (
        "huge invalid tool schema",
        "chat",
        {
            "tools": [{"type": "function", "function": {"name": "f", "parameters": HUGE_SCHEMA}}],
            "tool_choice": "required",
        },
        400,
        None,
    ),
    ("huge stop string", "chat", {"stop": ["s" * BIG]}, 400, "stop"),
    ("huge stop list entry", "completions", {"stop": "s" * BIG}, 400, "stop"),
    (
        "enormous invalid grammar",
        "chat",
        {"structured_outputs": {"grammar": "root ::= " + '"a" ' * 50_000 + "( ??"}},
        400,
        None,
    ),
    ("enormous invalid regex", "chat", {"structured_outputs": {"regex": "(" * 50_000}}, 400, None),
    (
        "huge invalid json schema",
        "chat",
        {"structured_outputs": {"json": {**HUGE_SCHEMA, "required": 5}}},
        400,
        None,
    ),
    ("huge model name", "chat", {"model": "m" * BIG}, 400, "model"),
    (
        "huge tool_choice name",
        "chat",
        {"tool_choice": {"type": "function", "function": {"name": "n" * BIG}}},
        400,
        None,
    ),
]


def _body(endpoint: str, fields: dict[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = {"model": DEFAULT_MODEL_ID, "max_tokens": 2}
    if endpoint == "chat":
        base["messages"] = [{"role": "user", "content": "hi"}]
    else:
        base["prompt"] = "hi"
    return {**base, **fields}


@pytest.mark.parametrize(
    ("name", "endpoint", "fields", "status", "param"), CASES, ids=[c[0] for c in CASES]
)
async def test_hostile_input_is_a_bounded_4xx(
    vllm_mtls_stack: RunningStack,
    name: str,
    endpoint: str,
    fields: dict[str, Any],
    status: int,
    param: str | None,
) -> None:
    path = "chat/completions" if endpoint == "chat" else "completions"
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{vllm_mtls_stack.base_url}/{path}", json=_body(endpoint, fields)) as r,
    ):
        body = await r.json()
    error = body["error"]
    assert r.status == status, (name, r.status, error["message"][:300])
    assert len(error["message"]) <= MAX_MESSAGE_CHARS, name
    assert "metadata" not in error["message"] and "Stream removed" not in error["message"]
    if param is not None:
        assert (error["param"] or "").startswith(param), (name, error["param"])
    assert len(error["param"] or "") <= 200
