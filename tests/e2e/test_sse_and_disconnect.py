"""Raw HTTP: SSE framing, malformed bodies, and disconnects freeing engine work."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from services.engine.model_prep import DEFAULT_MODEL_ID
from tests.conftest import RunningStack

MODEL = DEFAULT_MODEL_ID


async def test_sse_framing(vllm_stack: RunningStack) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": 6,
        "stream": True,
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{vllm_stack.base_url}/chat/completions", json=body) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        raw = (await response.read()).decode()
    events = raw.split("\n\n")
    assert events[-1] == "", "the stream ends with a blank line"
    events = events[:-1]
    assert all(e.startswith("data: ") for e in events), events
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: ") :]) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (json.dumps({"model": MODEL}).encode(), "messages"),
        (json.dumps({"model": MODEL, "messages": "hi"}).encode(), "messages"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "model"),
        (
            json.dumps({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}).encode(),
            "messages[0].role",
        ),
    ],
)
async def test_malformed_bodies_are_400(
    vllm_stack: RunningStack, payload: bytes, param: str | None
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{vllm_stack.base_url}/chat/completions",
            data=payload,
            headers={"Content-Type": "application/json"},
        ) as response,
    ):
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert error["param"] == param


async def test_disconnect_aborts_engine_request(vllm_stack: RunningStack) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a long story"}],
        "max_tokens": 1500,
        "stream": True,
        "temperature": 1.0,
        "min_tokens": 1500,
    }
    async with aiohttp.ClientSession() as session:
        response = await session.post(f"{vllm_stack.base_url}/chat/completions", json=body)
        for _ in range(3):
            await response.content.readline()
        load = await asyncio.to_thread(vllm_stack.engine_load)
        assert load.in_flight == 1 and load.running == 1
        # vLLM's per-step statistics reach the load report while the stream runs.
        assert load.kv_cache_usage > 0
        response.close()  # drop the connection mid-stream
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        load = await asyncio.to_thread(vllm_stack.engine_load)
        if load.in_flight == 0 and load.running == 0:
            break
        await asyncio.sleep(0.05)
    assert (load.in_flight, load.running) == (0, 0), "the engine still holds the request"
