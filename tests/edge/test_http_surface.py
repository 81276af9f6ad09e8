"""Auth, unknown endpoints, limits, and SSE framing of hostile content."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import aiohttp
import openai
import pytest

from devstack.processes import free_port
from tests.conftest import SCRIPTED_MODEL, RunningStack

KEY = "sk-tera-test-0123456789"
CHAT = {"model": SCRIPTED_MODEL, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def keyed_stack(scripted_stack) -> RunningStack:  # type: ignore[no-untyped-def]
    return scripted_stack(edge_env={"TERA_API_KEYS": f"{KEY},sk-other"})


async def test_missing_and_wrong_keys_are_401(keyed_stack: RunningStack) -> None:
    url = f"{keyed_stack.base_url}/chat/completions"
    async with aiohttp.ClientSession() as session:
        for headers, code in [
            ({}, "missing_api_key"),
            ({"Authorization": "Bearer sk-wrong"}, "invalid_api_key"),
            ({"Authorization": f"Basic {KEY}"}, "missing_api_key"),
        ]:
            async with session.post(url, json=CHAT, headers=headers) as r:
                assert r.status == 401
                error = (await r.json())["error"]
                assert error["code"] == code
                assert KEY not in json.dumps(error)
        async with session.get(f"{keyed_stack.base_url.removesuffix('/v1')}/health") as r:
            assert r.status == 200, "probes need no key"


async def test_sdk_with_key_and_ignored_org_headers(keyed_stack: RunningStack) -> None:
    client = openai.AsyncOpenAI(
        base_url=keyed_stack.base_url,
        api_key=KEY,
        max_retries=0,
        organization="org-x",
        project="proj-y",
    )
    r = await client.chat.completions.create(**CHAT, max_tokens=2)
    assert r.choices[0].message.content
    bad = openai.AsyncOpenAI(base_url=keyed_stack.base_url, api_key="sk-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await bad.models.list()


def test_refuses_public_bind_without_keys() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.edge", "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "without API keys" in result.stderr


@pytest.mark.parametrize(
    "path",
    [
        "/v1/embeddings",
        "/v1/images/generations",
        "/v1/moderations",
        "/v1/fine_tuning/jobs",
        "/v1/files",
        "/v1/no-such-thing",
        "/v2/chat/completions",
    ],
)
async def test_unoffered_endpoints_are_404(shared_scripted_stack: RunningStack, path: str) -> None:
    root = shared_scripted_stack.base_url.removesuffix("/v1")
    async with aiohttp.ClientSession() as session, session.post(f"{root}{path}", json={}) as r:
        assert r.status == 404
        error = (await r.json())["error"]
    assert "does not offer" in error["message"]
    assert error["type"] == "invalid_request_error"


async def test_models_retrieve_with_slash_and_unknown(shared_scripted_stack: RunningStack) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{shared_scripted_stack.base_url}/models/{SCRIPTED_MODEL}") as r:
            assert r.status == 200 and (await r.json())["id"] == SCRIPTED_MODEL
        async with session.get(f"{shared_scripted_stack.base_url}/models/nope/nope") as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "model_not_found"


async def test_body_too_large_is_413(shared_scripted_stack: RunningStack) -> None:
    huge = {**CHAT, "messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{shared_scripted_stack.base_url}/chat/completions", json=huge) as r,
    ):
        assert r.status == 413
        assert (await r.json())["error"]["code"] == "request_too_large"


async def test_limits_from_config(scripted_stack) -> None:  # type: ignore[no-untyped-def]
    stack = scripted_stack(edge_args=["--config", _edge_config(max_n=2, max_tokens_limit=8)])
    async with aiohttp.ClientSession() as session:
        for extra, param in [({"n": 3}, "n"), ({"max_tokens": 9}, "max_tokens")]:
            async with session.post(
                f"{stack.base_url}/chat/completions", json={**CHAT, **extra}
            ) as r:
                assert r.status == 400
                assert (await r.json())["error"]["param"] == param


async def test_idle_stream_times_out_with_error_event(scripted_stack) -> None:  # type: ignore[no-untyped-def]
    stack = scripted_stack(
        behaviour={"fail_after_tokens": None, "tokens_per_second": 0.2, "default_max_tokens": 5},
        edge_args=["--config", _edge_config(stream_idle_timeout_s=1)],
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{stack.base_url}/chat/completions", json={**CHAT, "stream": True}) as r,
    ):
        assert r.status == 200
        raw = await asyncio.wait_for(r.read(), 10)
    events = [e for e in raw.decode().split("\n\n") if e]
    assert events[-1] != "data: [DONE]"
    last = json.loads(events[-1].removeprefix("data: "))
    assert last["error"]["code"] == "stream_idle_timeout"
    finish = json.loads(events[-2].removeprefix("data: "))["choices"][0]["finish_reason"]
    assert finish == "error"


async def test_hostile_content_cannot_break_sse(scripted_stack) -> None:  # type: ignore[no-untyped-def]
    nasty = "line\n\ndata: [DONE]\n\r\n{i}"
    stack = scripted_stack(behaviour={"token_text": nasty, "default_max_tokens": 3})
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{stack.base_url}/chat/completions", json={**CHAT, "stream": True}) as r,
    ):
        raw = (await r.read()).decode()
    events = raw.split("\n\n")[:-1]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "".join(nasty.format(i=i) for i in range(3))


def _edge_config(**fields: object) -> str:
    import tempfile

    import yaml

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(fields, f)
        return f.name
