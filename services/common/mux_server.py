"""GenerateMux, the serving end (the engine's, and the router's toward edges): each open
frame runs the server's own per-call handler, with a MuxContext standing in for the call's
ServicerContext, and every stream's responses go out through one outbox
(services/common/mux.py), batched.

A cancel frame, the stream's deadline, or the end of the multiplexed call cancels the
stream's task, which cancels the handler as a cancelled plain call would (the engine aborts
the request, the router its upstream call).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.common import metadata
from services.common.mux import Metadata, Outbox, from_pairs, to_pairs
from services.common.telemetry import tracing_enabled
from services.proto_gen.tera.v1 import engine_pb2 as pb

log = logging.getLogger("tera.mux")

# A per-call server-streaming handler on serialized messages: request bytes and a context
# in, response bytes out. By method path.
Handler = Callable[[bytes, Any], AsyncIterator[bytes]]


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, trailing: Metadata) -> None:
        super().__init__(details)
        self.end = pb.MuxEnd(
            code=code.value[0], details=details, trailing_metadata=to_pairs(trailing)
        )


class Peer(Protocol):
    """Who is on the other end of a multiplexed call: the GenerateMux call's
    ServicerContext, or a stream link's (mux_stream.py)."""

    def peer(self) -> str: ...

    def auth_context(self) -> dict[str, list[bytes]]: ...


class MuxContext:
    """What Generate uses of grpc.aio.ServicerContext, for one multiplexed stream."""

    def __init__(self, opened: pb.MuxOpen, call: Peer, outbox: Outbox, stream_id: int) -> None:
        self._call = call  # the multiplexed call's own: its peer is every stream's
        self._outbox = outbox
        self._id = stream_id
        self._code: grpc.StatusCode | None = None
        self._metadata = from_pairs(opened.metadata)
        self._deadline = (
            time.monotonic() + opened.timeout_s if opened.HasField("timeout_s") else None
        )
        self._keepalive = (metadata.KEEPALIVE, "1") in self._metadata

    def keepalive(self) -> None:
        """Tells a caller that takes them (metadata.KEEPALIVE) that the stream is alive
        while the handler waits on its behalf, between two messages; else nothing."""
        if self._keepalive:
            self._outbox.put(self._id, keepalive=pb.MuxKeepalive())

    def send_now(self, message: bytes) -> None:
        """Sends a response message of the stream without yielding it from the handler
        (the router's relay forwards on the link's reader, services/router/relay.py). It
        goes out in order with those yielded, as long as the handler yields none while
        sending so."""
        self._outbox.put(self._id, message=message)

    def invocation_metadata(self) -> Metadata:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Metadata = ()
    ) -> None:
        self._code = code
        raise _Aborted(code, details, trailing_metadata)

    def code(self) -> grpc.StatusCode | None:
        """The code the stream was aborted with, if it was (the handler's own view)."""
        return self._code

    def peer(self) -> str:
        return self._call.peer()

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._call.auth_context()


class MuxServer:
    """One GenerateMux call: its streams by id, and the outbox they all write to. A
    transport feeds it the caller's messages (`received`, then `finish` when the caller
    closes its side) and writes `outgoing` (or through `outbox`); `serve` does both for a
    gRPC call."""

    def __init__(self, handlers: dict[str, Handler], call: Peer, *, tracer: str) -> None:
        self._handlers = handlers
        self._call = call
        self._tracer = tracer
        self._outbox = Outbox()
        self._streams: dict[int, asyncio.Task[None]] = {}
        self._finishing: asyncio.Task[None] | None = None

    def running(self) -> list[asyncio.Task[None]]:
        """The streams' tasks now in flight."""
        return list(self._streams.values())

    async def serve(self, frames: AsyncIterator[pb.MuxFrames]) -> AsyncIterator[pb.MuxFrames]:
        reader = asyncio.create_task(self._read(frames))
        try:
            async for batch in self.outgoing():
                yield batch
        finally:  # the caller went away (or the server stops): every stream is aborted
            reader.cancel()
            self.abort()

    def outgoing(self) -> AsyncIterator[pb.MuxFrames]:
        return self._outbox.batches()

    @property
    def outbox(self) -> Outbox:
        """For a transport that writes through it instead of reading `outgoing`."""
        return self._outbox

    def received(self, message: pb.MuxFrames) -> None:
        for frame in message.frames:
            if frame.HasField("open"):
                self._open(frame.stream_id, frame.open)
            elif (task := self._streams.get(frame.stream_id)) is not None:
                task.cancel()  # a cancel frame

    def finish(self) -> None:
        """The caller closed its side: the streams it started finish, then the call."""
        if self._finishing is None:
            self._finishing = asyncio.create_task(self._finish())

    def abort(self) -> None:
        if self._finishing is not None:
            self._finishing.cancel()
        for task in list(self._streams.values()):
            task.cancel()

    async def _read(self, frames: AsyncIterator[pb.MuxFrames]) -> None:
        async for message in frames:
            self.received(message)
        await self._finish()

    async def _finish(self) -> None:
        await asyncio.gather(*self._streams.values(), return_exceptions=True)
        self._outbox.close()

    def _open(self, stream_id: int, opened: pb.MuxOpen) -> None:
        if stream_id in self._streams:
            # Refused, as a call with a bad argument: replacing the entry would orphan the
            # live stream's task (its cancel frame could no longer reach it). Clients
            # number their streams and never reuse one.
            details = f"stream id {stream_id} is in use"
            end = pb.MuxEnd(code=grpc.StatusCode.INVALID_ARGUMENT.value[0], details=details)
            self._outbox.put(stream_id, end=end)
            return
        self._streams[stream_id] = asyncio.create_task(self._run(stream_id, opened))

    async def _run(self, stream_id: int, opened: pb.MuxOpen) -> None:
        context = MuxContext(opened, self._call, self._outbox, stream_id)
        try:
            end = await self._stream(stream_id, opened, context)
        except _Aborted as aborted:
            end = aborted.end
        except TimeoutError:
            end = pb.MuxEnd(
                code=grpc.StatusCode.DEADLINE_EXCEEDED.value[0], details="Deadline Exceeded"
            )
        except Exception as exc:  # Generate maps its own errors; this is a bad frame
            log.exception("multiplexed stream failed")
            end = pb.MuxEnd(code=grpc.StatusCode.INTERNAL.value[0], details=str(exc))
        finally:
            self._streams.pop(stream_id, None)
        self._outbox.put(stream_id, end=end)

    async def _stream(self, stream_id: int, opened: pb.MuxOpen, context: MuxContext) -> pb.MuxEnd:
        handler = self._handlers.get(opened.method)
        if handler is None:
            raise _Aborted(grpc.StatusCode.UNIMPLEMENTED, f"{opened.method} is not multiplexed", ())
        async with asyncio.timeout(context.time_remaining()):
            with _server_span(self._tracer, opened.method, context.invocation_metadata()):
                put = self._outbox.put_at_once  # the first message: the caller waits on it
                async for message in handler(opened.request, context):
                    put(stream_id, message=message)
                    put = self._outbox.put
        return pb.MuxEnd()


@contextlib.contextmanager
def _server_span(tracer_name: str, method: str, metadata: Metadata) -> Iterator[None]:
    """The span a plain call's server interceptor would open, child of the caller's."""
    if not tracing_enabled():
        yield
        return
    parent = propagate.extract({k: v for k, v in metadata if isinstance(v, str)})
    tracer = trace.get_tracer(tracer_name)
    with tracer.start_as_current_span(method, context=parent, kind=SpanKind.SERVER) as span:
        try:
            yield
        except _Aborted as aborted:
            span.set_status(Status(StatusCode.ERROR, aborted.end.details))
            raise
