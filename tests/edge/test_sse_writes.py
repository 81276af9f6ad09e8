"""How a streamed chat answer's first bytes reach the client's socket: read raw, below
any HTTP client, where each of the edge's writes is one chunk of the chunked body."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

from tests.conftest import SCRIPTED_MODEL, RunningStack


async def _first_body_chunk(base_url: str, body: dict) -> bytes:
    url = urlsplit(base_url)
    payload = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(
            f"POST {url.path}/chat/completions HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"transfer-encoding: chunked" in head.lower(), head
        size = int(await asyncio.wait_for(reader.readuntil(b"\r\n"), 30), 16)
        return await reader.readexactly(size)
    finally:
        writer.close()


async def test_the_role_chunk_goes_out_with_the_first_token(
    shared_scripted_stack: RunningStack,
) -> None:
    """One write, so one send and one client wake-up, before the first token: written
    alone, the role chunk was a chunk of its own (the waterfall's "edge render + write")."""
    body = {
        "model": SCRIPTED_MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
        "stream": True,
    }
    first = await _first_body_chunk(shared_scripted_stack.base_url, body)
    events = [json.loads(e.removeprefix(b"data: ")) for e in first.split(b"\n\n") if e]
    deltas = [e["choices"][0]["delta"] for e in events]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert len(deltas) == 2 and deltas[1].get("content"), deltas
