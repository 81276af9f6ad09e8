"""Part relay_mux: what multiplexing streams would save the relay, measured on the
transport alone before the hot path is rebuilt for it (issue 22).

At one token per message per stream (a GPU engine decoding at 30-100 tok/s a stream),
the relay's cost is per message: grpc aio's per-message machinery in the router and the
edge, and one HTTP write per token to each client. Three processes, measured alike:
- a gRPC hop that forwards opaque bytes (the router's shape) between a source and the
  bench, in two arms: `one` (a call per stream, a message per token: today's shape) and
  `mux` (one call for all streams, each message carrying every stream's token of one
  decode step: a multiplexed hop);
- an aiohttp server writing one SSE chunk per token to each client (`sse`): the edge's
  per-token floor, which no multiplexing between services removes.
The source emits on one ticker at the decode rate, so both arms offer the same tokens.
Reported: the hop's and the SSE server's CPU per 1,000 delivered tokens (from /proc) and
the cores they would need per 10,000 tok/s; with those, a multiplexed relay's projected
cores per 10,000 tok/s = mux hop (router) + mux hop (edge's gRPC side) + SSE floor.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import uvloop
from aiohttp import web

from bench.common import cpu_seconds
from devstack.processes import ManagedProcess, free_port, wait_until

STREAMS = (32, 64, 256)
RATE = 100.0  # tokens/s per stream, one per message
WINDOW_S = 5.0
DELTA = b"x" * 24  # a one-token delta's size on the wire, about
SSE_CHUNK = (
    b'data: {"id":"chatcmpl-0","object":"chat.completion.chunk","created":0,'
    b'"model":"m","choices":[{"index":0,"delta":{"content":" tok"}}]}\n\n'
)
_SOURCE_SERVICE = "/tera.bench.Source/"


# The source: streams tokens at RATE on one ticker.


class _Ticker:
    """Wakes every stream's queue once per decode step, as one engine step would."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[None]] = set()
        asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(1 / RATE)
            for queue in self.queues:
                queue.put_nowait(None)

    async def steps(self, count: int) -> AsyncIterator[None]:
        queue: asyncio.Queue[None] = asyncio.Queue()
        self.queues.add(queue)
        try:
            for _ in range(count):
                await queue.get()
                yield None
        finally:
            self.queues.discard(queue)


def _one_handler(ticker: _Ticker) -> grpc.RpcMethodHandler:
    async def one(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for _ in ticker.steps(int(request)):
            yield DELTA

    return grpc.unary_stream_rpc_method_handler(one)


def _mux_handler(ticker: _Ticker) -> grpc.RpcMethodHandler:
    async def mux(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        streams, tokens = (int(v) for v in request.split(b","))
        # One message per step: every stream's id and its delta.
        step = b"".join(struct.pack("<I", i) + DELTA for i in range(streams))
        async for _ in ticker.steps(tokens):
            yield step

    return grpc.unary_stream_rpc_method_handler(mux)


async def _serve_source(port: int) -> None:
    ticker = _Ticker()
    server = grpc.aio.server()
    handlers = {"One": _one_handler(ticker), "Mux": _mux_handler(ticker)}
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("tera.bench.Source", handlers)]
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# The hop: forwards any call's messages as opaque bytes, as the router does.


async def _serve_hop(port: int, upstream: int) -> None:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{upstream}")

    def forward(method: str) -> grpc.RpcMethodHandler:
        call = channel.unary_stream(_SOURCE_SERVICE + method)

        async def relay(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            async for message in call(request):
                yield message

        return grpc.unary_stream_rpc_method_handler(relay)

    server = grpc.aio.server()
    handlers = {"One": forward("One"), "Mux": forward("Mux")}
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("tera.bench.Source", handlers)]
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# The SSE server: one chunk per token per client, the edge's per-token floor.


async def _serve_sse(port: int) -> None:
    ticker = _Ticker()

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        async for _ in ticker.steps(int(request.query["tokens"])):
            await response.write(SSE_CHUNK)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/stream", stream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


# The bench side.


async def _grpc_arm(port: int, arm: str, streams: int, tokens: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        if arm == "one":
            call = channel.unary_stream(_SOURCE_SERVICE + "One")

            async def drain() -> int:
                return sum([1 async for _ in call(str(tokens).encode())])

            return sum(await asyncio.gather(*(drain() for _ in range(streams))))
        call = channel.unary_stream(_SOURCE_SERVICE + "Mux")
        size = 4 + len(DELTA)
        return sum([len(m) // size async for m in call(f"{streams},{tokens}".encode())])


async def _sse_arm(port: int, streams: int, tokens: int) -> int:
    url = f"http://127.0.0.1:{port}/stream?tokens={tokens}"
    limit = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=limit) as session:

        async def drain() -> int:
            async with session.get(url) as response:
                body = await response.read()
            return body.count(b"data: ")

        return sum(await asyncio.gather(*(drain() for _ in range(streams))))


def _measure(process: ManagedProcess, arm: str, streams: int, port: int) -> dict:
    tokens = int(RATE * WINDOW_S)
    client = (
        _sse_arm(port, streams, tokens) if arm == "sse" else _grpc_arm(port, arm, streams, tokens)
    )
    cpu, start = cpu_seconds(process.pid), time.monotonic()
    delivered = uvloop.run(client)
    cpu, wall = cpu_seconds(process.pid) - cpu, time.monotonic() - start
    per_1k = 1000 * cpu / max(delivered, 1)
    return {
        "arm": arm,
        "streams": streams,
        "offered_tok_s": round(streams * RATE),
        "delivered_tok_s": round(delivered / wall),
        "tokens_lost": streams * tokens - delivered,
        "cpu_s_per_1k_tokens": round(per_1k, 4),
        "cores_per_10k_tok_s": round(per_1k * 10, 3),
    }


def _start(role: str, *ports: int, log_dir: Path) -> ManagedProcess:
    args = ["-m", "bench.relay_mux", role, *(str(p) for p in ports)]
    process = ManagedProcess(role, args, log_path=log_dir / f"{role}.log")
    process.start()
    return process


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def run(results: Path) -> dict:
    source_port, hop_port, sse_port = free_port(), free_port(), free_port()
    processes = [
        _start("source", source_port, log_dir=results),
        hop := _start("hop", hop_port, source_port, log_dir=results),
        sse := _start("sse", sse_port, log_dir=results),
    ]
    try:
        for port in (source_port, hop_port, sse_port):
            wait_until(lambda p=port: _listening(p), timeout_s=60, watch=processes)
        rows = [_measure(hop, "one", n, hop_port) for n in STREAMS] + [
            _measure(hop, "mux", n, hop_port) for n in STREAMS
        ]
        rows += [_measure(sse, "sse", n, sse_port) for n in STREAMS]
    finally:
        for process in processes:
            process.stop()
    return {"rows": rows, "projection": _projection(rows)}


def _projection(rows: list[dict]) -> list[dict]:
    """Per stream count: today's two gRPC hops' cost per token against a multiplexed pair,
    each plus the SSE floor the edge pays either way."""
    cost = {(r["arm"], r["streams"]): r["cores_per_10k_tok_s"] for r in rows}
    return [
        {
            "streams": n,
            "grpc_hops_one_cores": round(2 * cost["one", n], 3),
            "grpc_hops_mux_cores": round(2 * cost["mux", n], 3),
            "sse_floor_cores": cost["sse", n],
            "relay_mux_projected_cores": round(2 * cost["mux", n] + cost["sse", n], 3),
        }
        for n in STREAMS
    ]


def main() -> None:
    role, *ports = sys.argv[1:]
    serve = {"source": _serve_source, "hop": _serve_hop, "sse": _serve_sse}[role]
    uvloop.run(serve(*(int(p) for p in ports)))


if __name__ == "__main__":
    main()
