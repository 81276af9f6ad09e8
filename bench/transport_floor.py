"""What one relayed message costs the reading process before any of Tera's code runs: a
server stream read with grpc aio (as the router and the edge read their multiplexed links
with `mux`) against the same bytes read from a plain asyncio socket (as stream links read
them), at one message per GPU-shaped decode step; and the edge's floor a step, a socket
read followed by one SSE-sized write to each of 32 clients' sockets. Server, reader and
clients are processes of their own, with the relay's gRPC settings.

    python -m bench.transport_floor --rate 100 --seconds 5   # prints JSON
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import grpc
import uvloop

from bench.common import own_cpu_seconds
from devstack.stack import relay_env

METHOD = "/tera.bench.Floor/Stream"
PAYLOAD = b"x" * 60  # about one token's GenerateResponse in a MuxFrames message
HEADER = 4
FANOUT_STREAMS = 32
CHUNK = b"x" * 160  # about one token's SSE chunk, with its HTTP chunk framing


async def _paced(rate: float, seconds: float, report: Any) -> AsyncIterator[int]:
    """Yields at `rate` per second, on a schedule (not a sleep after each); then puts the
    writer's CPU µs a message on `report`."""
    started = own_cpu_seconds()
    due = time.monotonic()
    messages = int(rate * seconds)
    for i in range(messages):
        yield i
        due += 1 / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
    report.put((own_cpu_seconds() - started) / messages * 1e6)


async def _serve_grpc(rate: float, seconds: float, ready: Any) -> None:
    async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for _ in _paced(rate, seconds, ready):
            yield PAYLOAD

    handler = grpc.method_handlers_generic_handler(
        "tera.bench.Floor", {"Stream": grpc.unary_stream_rpc_method_handler(stream)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    ready.put(server.add_insecure_port("127.0.0.1:0"))
    await server.start()
    await server.wait_for_termination()


async def _serve_socket(rate: float, seconds: float, ready: Any) -> None:
    async def stream(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for _ in _paced(rate, seconds, ready):
            writer.write(len(PAYLOAD).to_bytes(HEADER, "big") + PAYLOAD)
        writer.close()

    server = await asyncio.start_server(stream, "127.0.0.1", 0)
    ready.put(server.sockets[0].getsockname()[1])
    await server.serve_forever()


def _server(kind: str, rate: float, seconds: float, ready: Any) -> None:
    serve = _serve_grpc if kind == "grpc" else _serve_socket
    uvloop.run(serve(rate, seconds, ready))


async def _read_grpc(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_stream(METHOD)(b"")
        messages = 0
        while await call.read() is not grpc.aio.EOF:
            messages += 1
        return messages


class _Frames(asyncio.Protocol):
    """Length-prefixed frames, split in the protocol's callback as a transport would; each
    one written on to every one of `clients` as the edge writes a token to its streams."""

    def __init__(
        self, done: asyncio.Future[int], clients: tuple[asyncio.Transport, ...] = ()
    ) -> None:
        self._buffer = bytearray()
        self._done = done
        self._clients = clients
        self.messages = 0

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= HEADER:
            size = HEADER + int.from_bytes(self._buffer[:HEADER], "big")
            if len(self._buffer) < size:
                return
            del self._buffer[:size]
            self.messages += 1
            for client in self._clients:
                client.write(CHUNK)

    def connection_lost(self, exc: Exception | None) -> None:
        self._done.set_result(self.messages)


async def _read_socket(port: int, clients: tuple[asyncio.Transport, ...] = ()) -> int:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    await loop.create_connection(lambda: _Frames(done, clients), "127.0.0.1", port)
    return await done


class _Tally:
    """What the fan-out's clients read, and when the last of them has closed."""

    def __init__(self) -> None:
        self.read = 0
        self.open = FANOUT_STREAMS
        self.closed = asyncio.Event()


class _Client(asyncio.Protocol):
    """One SSE client of the fan-out."""

    def __init__(self, tally: _Tally) -> None:
        self._tally = tally

    def data_received(self, data: bytes) -> None:
        self._tally.read += len(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._tally.open -= 1
        if not self._tally.open:
            self._tally.closed.set()


async def _serve_clients(ready: Any) -> None:
    """Takes FANOUT_STREAMS connections; once all have closed, puts the bytes read."""
    tally = _Tally()
    server = await asyncio.get_running_loop().create_server(lambda: _Client(tally), "127.0.0.1", 0)
    ready.put(server.sockets[0].getsockname()[1])
    await tally.closed.wait()
    ready.put(tally.read)


def _clients(ready: Any) -> None:
    uvloop.run(_serve_clients(ready))


async def _read_fanout(port: int, clients_port: int) -> int:
    loop = asyncio.get_running_loop()
    clients = [
        (await loop.create_connection(asyncio.Protocol, "127.0.0.1", clients_port))[0]
        for _ in range(FANOUT_STREAMS)
    ]
    try:
        return await _read_socket(port, tuple(clients))
    finally:
        for client in clients:
            client.close()


def _us_per_message(kind: str, rate: float, seconds: float) -> tuple[float, float]:
    """The reader's and the writer's CPU µs a message (the writer's with its pacing)."""
    context = multiprocessing.get_context("spawn")
    ready, clients_ready = context.Queue(), context.Queue()
    server_kind = "grpc" if kind == "grpc" else "socket"
    server = context.Process(target=_server, args=(server_kind, rate, seconds, ready), daemon=True)
    clients = context.Process(target=_clients, args=(clients_ready,), daemon=True)
    server.start()
    try:
        port = ready.get(timeout=30)
        read: Callable[[int], Coroutine[Any, Any, int]] = (
            _read_grpc if kind == "grpc" else _read_socket
        )
        if kind == "fanout":
            clients.start()
            read = functools.partial(_read_fanout, clients_port=clients_ready.get(timeout=30))
        started = own_cpu_seconds()
        messages = uvloop.run(read(port))
        reader_seconds = own_cpu_seconds() - started
        if messages != int(rate * seconds):
            raise RuntimeError(f"{kind}: read {messages} of {int(rate * seconds)} messages")
        if kind == "fanout":
            expected = messages * FANOUT_STREAMS * len(CHUNK)
            if (delivered := clients_ready.get(timeout=30)) != expected:
                raise RuntimeError(f"fanout: the clients read {delivered} of {expected} bytes")
        return reader_seconds / messages * 1e6, ready.get(timeout=30)
    finally:
        for process in (server, clients):
            if process.pid is not None:  # started
                process.kill()
                process.join()


def measure(rate: float, seconds: float) -> dict[str, float]:
    """The reader's and the paced writer's CPU µs a message over gRPC and over a socket,
    and the fan-out reader's (a read and FANOUT_STREAMS writes), measured in a fresh
    process with the relay's gRPC settings (grpc reads them when first imported)."""
    command = [sys.executable, "-m", "bench.transport_floor", "--rate", str(rate)]
    command += ["--seconds", str(seconds)]
    done = subprocess.run(
        command, env=relay_env(dict(os.environ)), capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    # Interleaved, so that a drift of the host's speed falls on both kinds alike.
    runs: dict[str, list[tuple[float, float]]] = {"grpc": [], "socket": [], "fanout": []}
    for _ in range(2):
        for kind, us in runs.items():
            us.append(_us_per_message(kind, args.rate, args.seconds))
    floor = {}
    for kind, us in runs.items():
        floor[f"{kind}_read_us"] = min(read for read, _ in us)
        if kind != "fanout":  # its writer is the socket kind's
            floor[f"{kind}_write_us"] = min(write for _, write in us)
    print(json.dumps(floor))


if __name__ == "__main__":
    main()
