"""A streamed answer over the multiplexed router link (router_transport: stream, the default)
is written to the client on the link's reader, past the request's task (forwarding.py).
What the task's layers did per message still happens: the idle clock hears each message,
the observer counts each one, and a client's socket that is backed up is left to the task,
which waits for it."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from services.edge.sse import SSE_HEADERS, ImmediateWriter
from tests.conftest import SCRIPTED_MODEL, RunningStack
from tests.faults.fleet import scraped_metric

TOKENS = 40


@pytest.fixture
def steady_stack(scripted_stack, tmp_path: Path) -> RunningStack:  # type: ignore[no-untyped-def]
    """40 tokens over about 2 s, one a message, with a 1 s idle timeout at the edge."""
    config = tmp_path / "edge.yaml"
    config.write_text("stream_idle_timeout_s: 1.0\nrouter_transport: stream\n")
    return scripted_stack(
        behaviour={"tokens_per_second": 20, "token_text": "t{i} "},
        edge_args=["--config", str(config)],
    )


async def _stream(stack: RunningStack) -> list[dict]:
    body = {
        "model": SCRIPTED_MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{stack.base_url}/chat/completions", json=body) as r,
    ):
        assert r.status == 200
        raw = await r.text()
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e.strip()]
    assert events[-1] == "[DONE]", events[-2:]
    return [json.loads(e) for e in events[:-1]]


def _edge_metric(stack: RunningStack, name: str) -> float:
    return scraped_metric(f"{stack.ops_url}/metrics", name)


async def test_a_stream_longer_than_the_idle_timeout_completes(steady_stack: RunningStack) -> None:
    """Had the idle clock not heard the forwarded messages, the read the task leaves
    waiting would time out after 1 s, half way through."""
    chunks = await _stream(steady_stack)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "".join(f"t{i} " for i in range(TOKENS))
    assert chunks[-1]["usage"]["completion_tokens"] == TOKENS


async def test_every_forwarded_message_is_observed(steady_stack: RunningStack) -> None:
    chunks = await _stream(steady_stack)
    # The role chunk is the edge's own and the usage chunk comes after the last message.
    messages = [c for c in chunks if c["choices"] and "role" not in c["choices"][0]["delta"]]
    assert len(messages) >= TOKENS // 2, "the stand-in sent too few messages to tell"
    gaps = _edge_metric(steady_stack, "tera_edge_inter_token_latency_seconds_count")
    assert gaps == len(messages) - 1
    completion = _edge_metric(steady_stack, "tera_edge_tokens_total")
    assert completion == chunks[-1]["usage"]["total_tokens"]


async def test_a_backed_up_client_is_left_to_the_task() -> None:
    """write_now writes while the client's socket takes bytes at once, then refuses, so the
    response's task waits for the client; what was written decodes as the SSE sent (an
    empty write, framed, would have ended the chunked body)."""
    block = b"data: " + b"x" * 65_536 + b"\n\n"
    written: list[int] = []
    refused = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers=SSE_HEADERS)
        writer = await response.prepare(request)
        assert writer is not None
        await response.write(b"data: first\n\n")  # aiohttp sends the headers with it
        immediate = ImmediateWriter(response, writer)
        assert immediate.write_now(b"")  # a message that renders to nothing (no choices)
        while len(written) < 1_000 and immediate.write_now(block):
            written.append(len(block))
        refused.set()
        await response.write(b"data: [DONE]\n\n")  # the task's write waits for the client
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
            async with session.get(url) as r:
                await asyncio.wait_for(refused.wait(), 10)  # the client has read nothing yet
                body = await r.read()
    finally:
        await runner.cleanup()
    assert len(written) < 1_000, "write_now never saw the client backed up"
    expected = b"data: first\n\n" + block * len(written) + b"data: [DONE]\n\n"
    assert body == expected
