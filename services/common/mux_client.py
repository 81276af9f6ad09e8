"""GenerateMux, the calling end (the router's toward a replica, engine_transport: mux or
stream; the edge's toward the router, router_transport: mux or stream): Generate calls to
one server over one GenerateMux call, or one link to its stream listener, each behaving to
its caller as a grpc.aio.UnaryStreamCall.

The multiplexed call is opened with the first stream and again with the first stream
after it broke; when it breaks, every stream on it ends UNAVAILABLE, as plain calls to an
engine that died would, so retries and resumes work unchanged.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from services.common import mux_stream
from services.common.mux import GENERATE_MUX, Metadata, Outbox, from_pairs, to_pairs
from services.common.telemetry import (
    RPC_GRPC_STATUS_CODE,
    inject_headers,
    start_client_span,
    tracing_enabled,
)
from services.common.tls import TLSConfig, host_of
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc

log = logging.getLogger("tera.mux")

# What a plain call's response_deserializer does; None: messages stay bytes (the relay).
Deserialize = Callable[[bytes], Any] | None

# Takes a message as it arrives, on the link's reader, instead of the stream's reader
# (see MuxCall.read); False: not taken, the read returns it. It must not raise: it runs
# on the reader of every stream of the link.
Forward = Callable[[bytes], bool]


class MuxCall:
    """One stream on a multiplexed call: what the relay uses of grpc.aio.UnaryStreamCall."""

    def __init__(
        self,
        link: _Link,
        stream_id: int,
        timeout: float | None,
        deserialize: Deserialize,
        span: Span | None = None,
    ) -> None:
        self._link = link
        self._span = span  # the stream's client span, ended with the stream
        self._deserialize = deserialize
        self._id = stream_id
        # A deque and one future per wait rather than an asyncio.Queue: Queue.get looks
        # the running loop up (a getpid) and keeps a waiter list, once per relayed token.
        # Unbounded: no flow control per stream, so a slow caller's deltas wait here. At
        # most one answer's worth (the engine stops at max_tokens), and a plain call bounds
        # it no better: vLLM keeps generating into its request's output collector when the
        # Generate call's window is full, merging the deltas until they are read.
        self._loop = asyncio.get_running_loop()
        self._inbox: collections.deque[bytes | pb.MuxEnd] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._forward: Forward | None = None
        self._alive: Callable[[], None] | None = None
        self._end: pb.MuxEnd | None = None
        self._cancelled = False
        self._timer = None
        if timeout is not None:
            self._timer = self._loop.call_later(timeout, self._expire)

    async def read(self, forward: Forward | None = None) -> bytes | Any:
        """The next message, as grpc.aio's read; `forward`, while this read waits, takes the
        messages it accepts straight from the link, in order, so that a relay of bytes
        wakes its task only for what it must see itself (the end, the usage)."""
        if not self._inbox:
            self._forward = forward
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
                self._forward = None
        if self._cancelled:  # as a cancelled grpc.aio call's reads do
            raise asyncio.CancelledError()
        item = self._inbox[0]
        if isinstance(item, bytes):
            self._inbox.popleft()
            return item if self._deserialize is None else self._deserialize(item)
        # The end stays queued: every later read sees it too.
        if item.code == grpc.StatusCode.OK.value[0]:
            return grpc.aio.EOF
        raise self._error(item)

    def cancel(self) -> bool:
        if self._end is not None:
            return False
        self._cancelled = True
        self._link.cancel(self._id)
        self.ended(pb.MuxEnd(code=grpc.StatusCode.CANCELLED.value[0], details="Locally cancelled"))
        return True

    async def code(self) -> grpc.StatusCode:
        return _code(self._end.code) if self._end else grpc.StatusCode.UNKNOWN

    async def details(self) -> str:
        return self._end.details if self._end else ""

    async def initial_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata()  # engines send none on Generate

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata(*from_pairs(self._end.trailing_metadata if self._end else ()))

    def on_keepalive(self, alive: Callable[[], None]) -> None:
        """`alive` is called at each keepalive frame of the stream (the server waits on
        the caller's behalf; see metadata.KEEPALIVE)."""
        self._alive = alive

    def received(self, frame: pb.MuxFrame) -> None:
        if frame.HasField("end"):
            self.ended(frame.end)
        elif frame.HasField("keepalive"):
            if self._alive is not None and self._end is None:
                self._alive()
        elif self._end is None:
            self._put(frame.message)

    def ended(self, end: pb.MuxEnd) -> None:
        if self._end is not None:
            return
        self._end = end
        self._link.forget(self._id)
        if self._timer is not None:
            self._timer.cancel()
        self._put(end)
        if self._span is not None:
            _end_span(self._span, end)

    def _put(self, item: bytes | pb.MuxEnd) -> None:
        if self._forward is not None:
            if isinstance(item, bytes) and self._forward(item):
                return
            self._forward = None  # what comes after waits behind this item, in order
        self._inbox.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _expire(self) -> None:
        # The caller's deadline, kept here as grpc keeps it for a plain call; the engine
        # keeps it too and aborts the request.
        self._link.cancel(self._id)
        self.ended(
            pb.MuxEnd(code=grpc.StatusCode.DEADLINE_EXCEEDED.value[0], details="Deadline Exceeded")
        )

    @staticmethod
    def _error(end: pb.MuxEnd) -> grpc.aio.AioRpcError:
        trailing = grpc.aio.Metadata(*from_pairs(end.trailing_metadata))
        return grpc.aio.AioRpcError(_code(end.code), grpc.aio.Metadata(), trailing, end.details)


class _Link:
    """One multiplexed call and the streams on it: a GenerateMux call on the channel, or,
    with `stream` set and where the server offers a listener, a connection of its own
    (services/common/mux_stream.py). Either way the same frames, read the same way."""

    def __init__(
        self, channel: grpc.aio.Channel, address: str, stream: StreamTransport | None
    ) -> None:
        self._outbox = Outbox()
        self._streams: dict[int, MuxCall] = {}
        self._ids = itertools.count(1)
        self.broken = False
        self.channel = channel
        self._address = address
        self._stream = stream
        self.stream_port: int | None = None  # once connected: the listener's; 0: gRPC
        # A context of its own: the link outlives the request whose stream opened it, and
        # its port lookup must not be traced as a part of that request.
        self._reader = asyncio.create_task(self._run(), context=contextvars.Context())
        # Also when closed before it ever ran (its `finally` then never does).
        self._reader.add_done_callback(lambda _: self._lost("the multiplexed link was closed"))

    def open(
        self,
        method: str,
        request: bytes,
        metadata: Metadata,
        timeout: float | None,
        deserialize: Deserialize,
        span: Span | None,
    ) -> MuxCall:
        stream_id = next(self._ids)
        self._streams[stream_id] = call = MuxCall(self, stream_id, timeout, deserialize, span)
        opened = pb.MuxOpen(method=method, request=request, metadata=to_pairs(metadata))
        if timeout is not None:
            opened.timeout_s = timeout
        self._outbox.put_at_once(stream_id, open=opened)
        return call

    def cancel(self, stream_id: int) -> None:
        if stream_id in self._streams and not self.broken:
            self._outbox.put(stream_id, cancel=pb.MuxCancel())

    def forget(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)

    def close(self) -> None:
        self._reader.cancel()

    def _received(self, message: pb.MuxFrames) -> None:
        for frame in message.frames:
            if (stream := self._streams.get(frame.stream_id)) is not None:
                stream.received(frame)

    async def _run(self) -> None:
        details = "the multiplexed link was closed"
        try:
            details = await self._carry()
        except grpc.aio.AioRpcError as exc:
            failure = f"{exc.code().name} {exc.details()}"
            details = f"multiplexed call to {self._address} failed: {failure}"
        except OSError as exc:  # ssl.SSLError included
            details = f"multiplexed stream link to {self._address} failed: {exc!r}"
        finally:
            self._lost(details)

    def _lost(self, details: str) -> None:
        """However the link broke, no stream on it is left waiting (ended once each)."""
        self.broken = True
        self._outbox.close()
        lost = pb.MuxEnd(code=grpc.StatusCode.UNAVAILABLE.value[0], details=details)
        for stream in list(self._streams.values()):
            stream.ended(lost)

    async def _carry(self) -> str:
        """Carries the link's frames until it breaks; returns why it ended. A stream
        listener that is offered but cannot be reached (a network policy without its
        port, a certificate it refuses) leaves the link on gRPC, with a warning, rather
        than failing every stream."""
        port = await self._stream_port() if self._stream is not None else 0
        if port:
            host = _host(self._address)
            log.info("opening a multiplexed stream link to %s:%d", host, port)
            try:
                link = await asyncio.wait_for(self._connect(host, port), _CONNECT_TIMEOUT_S)
            except OSError as exc:  # ssl.SSLError and TimeoutError included
                log.warning("%s:%d unreachable (%r); using gRPC", host, port, exc)
            else:
                return await self._over_stream(link, f"{host}:{port}")
        return await self._over_grpc()

    async def _connect(self, host: str, port: int) -> mux_stream.FrameProtocol:
        assert self._stream is not None
        link = await mux_stream.connect(host, port, self._stream.tls, self._received)
        self.stream_port = port
        return link

    async def _over_grpc(self) -> str:
        log.info("opening a multiplexed call to %s", self._address)
        self.stream_port = 0
        method = self.channel.stream_stream(
            GENERATE_MUX,
            request_serializer=pb.MuxFrames.SerializeToString,
            response_deserializer=pb.MuxFrames.FromString,
        )
        call = method(self._outbox.batches())
        try:
            while (message := await call.read()) is not grpc.aio.EOF:
                self._received(message)  # type: ignore[arg-type]
        finally:
            call.cancel()
        return "the server ended the multiplexed call"

    async def _over_stream(self, link: mux_stream.FrameProtocol, peer: str) -> str:
        writer = asyncio.create_task(link.send_all(self._outbox))
        try:
            return f"multiplexed stream link to {peer}: {await link.closed}"
        finally:
            writer.cancel()
            link.close()

    async def _stream_port(self) -> int:
        """The server's stream listener (LoadReport.mux_stream_port); 0: none, or it
        could not be asked, and the link stays on gRPC."""
        try:
            load = await pb_grpc.EngineStub(self.channel).GetLoad(pb.GetLoadRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            log.warning("%s: no stream listener port (%s); using gRPC", self._address, exc.code())
            return 0
        return load.mux_stream_port


_CONNECT_TIMEOUT_S = 5.0  # TCP and TLS handshake to a stream listener


def _host(address: str) -> str:
    """The host of a gRPC target (host:port, [v6]:port, dns:///host:port)."""
    return host_of(address.rpartition("/")[2]).strip("[]")


@dataclass(frozen=True)
class StreamTransport:
    """Links over the server's stream listener where it offers one (transport `stream`),
    with the client certificate of the hop's gRPC channel."""

    tls: TLSConfig | None


class MuxChannel:
    """Generate calls to one server over one multiplexed call, opened lazily."""

    def __init__(
        self,
        channel: Callable[[], grpc.aio.Channel],
        address: str,
        stream: StreamTransport | None = None,
    ) -> None:
        self._channel = channel
        self._address = address
        self.stream = stream  # for links opened from now on
        self._link: _Link | None = None

    def unary_stream(
        self, method: str, response_deserializer: Deserialize = None
    ) -> Callable[..., MuxCall]:
        return functools.partial(self._start, method, response_deserializer)

    def close(self) -> None:
        if self._link is not None:
            self._link.close()

    def _start(
        self,
        method: str,
        deserialize: Deserialize,
        request: bytes,
        *,
        metadata: Metadata = (),
        timeout: float | None = None,
    ) -> MuxCall:
        channel = self._channel()
        # A renewed certificate means a new channel: the old link serves its own streams.
        if self._link is None or self._link.broken or self._link.channel is not channel:
            self._link = _Link(channel, self._address, self.stream)
        span = None
        if tracing_enabled():  # what the client interceptor does for a plain call
            span = start_client_span(method)
            with trace.use_span(span):  # the server's span is the client span's child
                metadata = (*metadata, *inject_headers().items())
        return self._link.open(method, request, metadata, timeout, deserialize, span)


def _end_span(span: Span, end: pb.MuxEnd) -> None:
    span.set_attribute(RPC_GRPC_STATUS_CODE, end.code)
    # A cancel is the caller's own doing (a hedge's loser, a caller gone): as for a plain
    # call, whose cancel raises no error through the client interceptor, not an error.
    if end.code not in (grpc.StatusCode.OK.value[0], grpc.StatusCode.CANCELLED.value[0]):
        span.set_status(Status(StatusCode.ERROR, f"{_code(end.code).name}: {end.details}"))
    span.end()


@functools.cache
def _code(value: int) -> grpc.StatusCode:
    return next(c for c in grpc.StatusCode if c.value[0] == value)
