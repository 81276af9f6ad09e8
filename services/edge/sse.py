"""Server-sent events framing. JSON escapes newlines, so no payload can break a frame."""

from __future__ import annotations

import json
from json.encoder import encode_basestring
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

DONE = b"data: [DONE]\n\n"

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


# json.dumps with any non-default argument builds a new encoder per call: 0.8 of its
# 2.6 us for a streamed chunk's choice, paid on every message.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def dumps(obj: Any) -> str:
    return _ENCODER.encode(obj)


# A str as JSON, exactly as `dumps` writes one (the escaper an ensure_ascii=False encoder
# uses): for chunks written without building their dict first.
json_string = encode_basestring


def frame(obj: Any) -> bytes:
    return b"data: " + dumps(obj).encode() + b"\n\n"


class ChunkFramer:
    """Pre-serializes the envelope of a stream's chunks; only choices vary per chunk."""

    def __init__(self, envelope: dict[str, Any], *, include_usage: bool) -> None:
        head = dumps({**envelope, "choices": []})
        assert head.endswith('"choices":[]}')
        self._prefix = ("data: " + head[: -len("]}")]).encode()
        self._suffix = (',"usage":null}\n\n' if include_usage else "}\n\n").encode()
        self._envelope = envelope

    def choices(self, choices_json: str) -> bytes:
        return self._prefix + choices_json.encode() + b"]" + self._suffix

    def usage(self, usage: dict[str, Any]) -> bytes:
        return frame({**self._envelope, "choices": [], "usage": usage})


async def open_stream(
    request: web.Request, headers: dict[str, str]
) -> tuple[web.StreamResponse, AbstractStreamWriter]:
    """The prepared SSE response, and the writer under it (for an `ImmediateWriter`)."""
    response = web.StreamResponse(headers={**SSE_HEADERS, **headers})
    writer = await response.prepare(request)
    assert writer is not None, "a fresh response is prepared once"
    return response, writer


class ImmediateWriter:
    """Writes an SSE response's bytes to the client's socket within the call, no coroutine,
    when the socket takes them without waiting: for writes made off the response's task
    (a forwarded stream's, forwarding.py). `write_now` is False when the transport holds
    unsent bytes or is closing; the caller then awaits `response.write`, which waits for
    a slow client and raises for a gone one.

    Use it only after the response's first `write`, which has the headers out whenever
    aiohttp chooses to send them (3.14's StreamResponse at `prepare`; a writer that buffers
    them, with the first write). Framing is aiohttp's: chunked (HTTP/1.1) or raw
    (HTTP/1.0), never compressed.
    """

    def __init__(self, response: web.StreamResponse, writer: AbstractStreamWriter) -> None:
        assert not response.compression, "SSE responses are not compressed"
        self._chunked = bool(getattr(writer, "chunked", False))
        self._writer = writer

    def write_now(self, data: bytes) -> bool:
        if not data:  # an empty chunk would end a chunked body
            return True
        transport = self._writer.transport
        if transport is None or transport.is_closing() or transport.get_write_buffer_size():
            return False
        transport.write(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)
        self._writer.output_size += len(data)  # as aiohttp counts its own writes
        return True
