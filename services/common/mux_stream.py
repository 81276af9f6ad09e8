"""GenerateMux over a TCP connection of its own (transport `stream`): the MuxFrames
messages the gRPC call carries, each behind a 4-byte length, on a listener beside the
server's gRPC port, under the same mutual TLS.

Why: the relay pays one message read and one write per hop per decode step, whatever the
batch, and gRPC aio costs ~220 us more than a plain socket to read a message and ~200 us
more to write one (`make bench`, "transport floor"): at 100 steps a second that is most
of what the edge and router spend a step. Dynamo's request plane defaults to plain TCP
for the same reason (docs/guides/request_plane.md: "Direct TCP connection for optimal
performance").

What the gRPC call gave that this keeps: mutual TLS with the services' certificates,
re-read when they change; the peer's certificate names for the router's per-stream guard
(as grpc's auth_context spells them); dead peers noticed by TCP keepalive and a user
timeout; and write backpressure (a link's writer waits for the socket to drain). A server
says where its listener is in LoadReport.mux_stream_port; clients look it up over gRPC
when they open a link and stay on gRPC where none is offered.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Any

import grpc

from services.common.mux import Outbox
from services.common.mux_server import Handler, MuxServer
from services.common.tls import TLSConfig
from services.proto_gen.tera.v1 import engine_pb2 as pb

log = logging.getLogger("tera.mux.stream")

_LENGTH = struct.Struct(">I")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # as grpc.max_receive_message_length on every hop

# As the gRPC hops' keepalive (grpc_options.py): probe an idle link after 10 s, give up
# after two unanswered probes 5 s apart, and on data unacknowledged for 20 s.
_KEEPALIVE = (
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 2),
    (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 20_000),
)


class FrameProtocol(asyncio.Protocol):
    """One connection's MuxFrames messages: each is handed to `received` as it arrives,
    on the event loop's callback (no task wakes per message); `send` writes one."""

    def __init__(self, received: Callable[[pb.MuxFrames], None]) -> None:
        self._received = received
        self._buffer = bytearray()
        self._writable = True  # False while the transport's buffer is over its high mark
        self._outbox: Outbox | None = None
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            for level, option, value in _KEEPALIVE:
                with contextlib.suppress(OSError):  # e.g. a platform without the option
                    sock.setsockopt(level, option, value)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        try:
            while len(buffer) - start >= _LENGTH.size:
                (size,) = _LENGTH.unpack_from(buffer, start)
                if size > MAX_MESSAGE_BYTES:
                    raise ValueError(f"a {size}-byte message is over the limit")
                end = start + _LENGTH.size + size
                if len(buffer) < end:
                    break
                message = pb.MuxFrames.FromString(bytes(buffer[start + _LENGTH.size : end]))
                start = end
                self._received(message)
        except Exception as exc:  # a peer that breaks the framing cannot be read on
            self._fail(f"unreadable message: {exc}")
            return
        del buffer[:start]

    def send(self, batch: pb.MuxFrames) -> None:
        data = batch.SerializeToString()
        assert self.transport is not None
        self.transport.write(_LENGTH.pack(len(data)) + data)

    async def send_all(self, outbox: Outbox) -> None:
        """Writes the outbox's batches as they come (`Outbox.write_through`) until it is
        closed and empty; while the socket is backed up they wait in the outbox, where
        the streams' frames keep joining one message."""
        self._outbox = outbox
        await outbox.write_through(self._send_now)

    def _send_now(self, batch: pb.MuxFrames) -> bool:
        if self.closed.done():
            return True  # the link is gone: its streams end UNAVAILABLE, nothing to write
        if not self._writable:
            return False
        self.send(batch)
        return True

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        if self._outbox is not None:
            self._outbox.wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(f"connection lost: {exc}" if exc else "connection closed")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _fail(self, details: str) -> None:
        log.warning("multiplexed stream link: %s", details)
        if not self.closed.done():
            self.closed.set_result(details)
        if self.transport is not None:
            self.transport.abort()


# -- TLS -------------------------------------------------------------------------------


def client_context(tls: TLSConfig) -> ssl.SSLContext:
    """Built per connection, so a renewed client certificate is used by the next link."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca))
    context.load_cert_chain(str(tls.cert), str(tls.key))
    return context


def _server_context(tls: TLSConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls.ca))
    context.load_cert_chain(str(tls.cert), str(tls.key))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class _ReloadingServerContext:
    """The listener's TLS context; each handshake switches to a fresh one once the files
    changed (a renewal), as the gRPC port's credentials do (tls.py)."""

    def __init__(self, tls: TLSConfig) -> None:
        self._tls = tls
        self._stamp = tls.stamp()
        self._current = _server_context(tls)
        self.context = _server_context(tls)
        self.context.sni_callback = self._handshake

    def _handshake(self, connection: ssl.SSLObject, _name: str | None, _ctx: Any) -> None:
        try:
            stamp = self._tls.stamp()
            if stamp != self._stamp:
                self._current, self._stamp = _server_context(self._tls), stamp
                log.info("certificates changed on disk: new stream links use them")
        except (OSError, ssl.SSLError) as exc:  # mid-rotation: keep the current one
            log.warning("certificate reload failed, keeping the current one: %s", exc)
        connection.context = self._current


def peer_names(certificate: dict[str, Any] | None) -> dict[str, list[bytes]]:
    """A verified peer certificate's names, keyed as grpc's auth_context keys them."""
    names: dict[str, list[bytes]] = {}
    if not certificate:
        return names
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.setdefault("x509_common_name", []).append(value.encode())
    kinds = {"DNS": "peer_dns", "URI": "peer_uri"}
    for kind, value in certificate.get("subjectAltName", ()):
        if kind in kinds:
            names.setdefault(kinds[kind], []).append(value.encode())
    if names:
        names["transport_security_type"] = [b"ssl"]
    return names


# -- serving ---------------------------------------------------------------------------


class _Peer:
    """What MuxContext asks of the call it stands in for: who is on the other end."""

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        host, port = transport.get_extra_info("peername")[:2]
        self._peer = f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
        ssl_object = transport.get_extra_info("ssl_object")
        # An in-memory link (join) carries the names its handshake would have given.
        joined = transport.get_extra_info("peer_names")
        self._names = (
            joined
            if joined is not None
            else peer_names(ssl_object.getpeercert() if ssl_object else None)
        )

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._names


class _ServedConnection(FrameProtocol):
    """One client's link: its frames go to a MuxServer, as a GenerateMux call's do."""

    def __init__(self, listener: StreamListener) -> None:
        super().__init__(self._frames_in)
        self._listener = listener
        self._mux: MuxServer | None = None
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._mux = MuxServer(
            self._listener.handlers, _Peer(transport), tracer=self._listener.tracer
        )
        self._task = asyncio.create_task(self._serve())
        self._listener.connections.add(self)

    def _frames_in(self, message: pb.MuxFrames) -> None:
        assert self._mux is not None
        self._mux.received(message)

    async def _serve(self) -> None:
        assert self._mux is not None
        try:
            await self.send_all(self._mux.outbox)
        finally:
            self._mux.abort()
            self.close()
            self._listener.connections.discard(self)

    def eof_received(self) -> bool:
        # The client closed its side: its streams finish, then the connection closes.
        assert self._mux is not None
        self._mux.finish()
        return True  # keep the write side open for their frames

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._task is not None and not self._task.done():
            self._task.cancel()  # every stream of the link is aborted, as the call's were

    def running(self) -> list[asyncio.Task[None]]:
        return self._mux.running() if self._mux is not None else []


class StreamListener:
    """The GenerateMux stream listener of an engine or router."""

    def __init__(self, handlers: dict[str, Handler], *, tracer: str) -> None:
        self.handlers = handlers
        self.tracer = tracer
        self.connections: set[_ServedConnection] = set()
        self._server: asyncio.Server | None = None
        self._address: tuple[str, int] | None = None  # where it listens, once it does
        self.tls: TLSConfig | None = None
        self.port = 0
        self._context: contextvars.Context | None = None  # what its connections run in

    async def start(self, host: str, port: int, tls: TLSConfig | None) -> None:
        context = _ReloadingServerContext(tls).context if tls is not None else None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ServedConnection(self), host, port, ssl=context
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("GenerateMux stream listener on %s:%d (tls=%s)", host, self.port, bool(tls))
        self.tls = tls
        self._address = (host, self.port)
        self._context = contextvars.copy_context()  # as the server's accepted sockets'
        _IN_PROCESS[self._address] = self

    def join(
        self, received: Callable[[pb.MuxFrames], None], names: dict[str, list[bytes]]
    ) -> FrameProtocol:
        """A link from this process with no socket (`connect`), served as one over TCP
        whose client presented a certificate with `names`."""
        assert self._address is not None and self._context is not None, "joined once listening"
        client = FrameProtocol(received)
        server = _ServedConnection(self)
        in_memory_pair(
            (client, contextvars.copy_context()),
            (server, self._context),
            peername=(self._address[0], 0),
            peer_names=names,
        )
        log.info("stream link to %s:%d joined in this process", *self._address)
        return client

    async def stop(self, grace: float | None) -> None:
        """Takes no new links, gives streams in flight `grace` seconds, then cuts the
        rest (their callers see UNAVAILABLE and resume elsewhere), as server.stop does."""
        if self._server is None:
            return
        if self._address is not None:
            _IN_PROCESS.pop(self._address, None)
        self._server.close()
        running = [task for c in self.connections for task in c.running()]
        if grace and running:
            await asyncio.wait(running, timeout=grace)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
        await self._server.wait_closed()


async def start_listener(
    handlers: dict[str, Handler],
    host: str,
    port: int | None,
    tls: TLSConfig | None,
    *,
    tracer: str,
) -> StreamListener | None:
    """The listener when `port` is set (0: any free port), else None."""
    if port is None:
        return None
    listener = StreamListener(handlers, tracer=tracer)
    await listener.start(host, port, tls)
    return listener


async def stop_together(
    server: grpc.aio.Server, listener: StreamListener | None, *, grace: float
) -> None:
    """Stops a gRPC server and its stream listener at once, each giving its streams
    `grace` seconds."""
    stopping = [server.stop(grace=grace)]
    if listener is not None:
        stopping.append(listener.stop(grace=grace))
    await asyncio.gather(*stopping)


async def connect(
    host: str,
    port: int,
    tls: TLSConfig | None,
    received: Callable[[pb.MuxFrames], None],
) -> FrameProtocol:
    """A client's link to a stream listener; its messages go to `received`. A listener
    of this very process (a router run in the edge's, services/gateway) is joined in
    memory, where the connection would have reached it anyway, and the handshake (under
    mutual TLS) would have gone through."""
    listener = _IN_PROCESS.get((host, port))
    if listener is not None:
        # Imported here: x509 parsing is for joined links only (the gateway imports it
        # at start-up), kept off the start of every other process.
        from services.common.tls_handshake import handshake_names

        names = handshake_names(listener.tls, tls, host)
        if names is not None:
            return listener.join(received, names)
    loop = asyncio.get_running_loop()
    context = client_context(tls) if tls is not None else None
    server_hostname = (tls.server_name or host) if tls is not None else None
    _, protocol = await loop.create_connection(
        lambda: FrameProtocol(received), host, port, ssl=context, server_hostname=server_hostname
    )
    return protocol


# -- in-process links ------------------------------------------------------------------

# This process's listeners by the address they serve. A connection from this process to
# one of these addresses reaches that listener, so joining it in memory changes nothing
# but the cost: no socket write, kernel hop, TLS record or wake-up of another process each
# way. What the handshake checks, tls_handshake.py checks as the link is joined.
_IN_PROCESS: dict[tuple[str, int], StreamListener] = {}


class _MemoryTransport(asyncio.Transport):
    """One end of an in-memory link. What it writes its peer's protocol receives on a
    later loop callback, in order, as from a socket; close sends end of file after what
    was written, and abort drops the link at both ends. Each end's protocol runs in the
    context of its own side, as a socket's runs in that of whoever opened it or listens
    for it (the gateway's router half, its tracing service among it), never the writer's."""

    def __init__(
        self, protocol: asyncio.Protocol, context: contextvars.Context, extra: dict[str, Any]
    ) -> None:
        super().__init__(extra)
        self._loop = asyncio.get_running_loop()
        self._protocol = protocol
        self._context = context
        self.peer: _MemoryTransport
        self._closing = False
        self._lost = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._closing:
            self.peer._soon(self.peer._deliver, bytes(data))

    def get_write_buffer_size(self) -> int:
        return 0  # delivered on the next callback; the reader never pauses

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self.peer._soon(self.peer._eof)
            self._soon(self._connection_lost, None)

    def abort(self) -> None:
        self._closing = True
        self._soon(self._connection_lost, None)
        reset = ConnectionResetError("reset by the peer in this process")
        self.peer._soon(self.peer._connection_lost, reset)

    def _soon(self, callback: Callable[..., None], *args: Any) -> None:
        """A call into this end's protocol, on a later loop callback in its context."""
        self._loop.call_soon(callback, *args, context=self._context)

    def _deliver(self, data: bytes) -> None:
        if not self._lost:
            self._protocol.data_received(data)

    def _eof(self) -> None:
        if self._lost:
            return
        if not self._protocol.eof_received():  # True: it writes on, then closes
            self.close()

    def _connection_lost(self, exc: Exception | None) -> None:
        if not self._lost:
            self._lost = self._closing = True
            self._protocol.connection_lost(exc)


_Side = tuple[asyncio.Protocol, contextvars.Context]  # a protocol, and what it runs in


def in_memory_pair(
    client: _Side, server: _Side, *, peername: tuple[str, int], peer_names: dict[str, list[bytes]]
) -> None:
    """Connects two protocols in memory; the server's peer is `peername`, whose
    certificate carried `peer_names`."""
    to_server = _MemoryTransport(*client, {"peername": peername})
    to_client = _MemoryTransport(*server, {"peername": peername, "peer_names": peer_names})
    to_server.peer, to_client.peer = to_client, to_server
    server[1].run(server[0].connection_made, to_client)
    client[1].run(client[0].connection_made, to_server)
