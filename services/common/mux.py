"""What both ends of GenerateMux share: the outbox that batches frames into messages, and
metadata as frames carry it.

The saving of a multiplexed call is in the outbox: a writer takes every frame queued since
its last write, of any number of streams, as one MuxFrames message, so a decode step of
every stream costs one gRPC message (one read, one wake-up, one sendmsg) instead of one
per stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from services.proto_gen.tera.v1 import engine_pb2 as pb

GENERATE = "/tera.v1.Engine/Generate"
GENERATE_MUX = "/tera.v1.Engine/GenerateMux"

Metadata = tuple[tuple[str, str | bytes], ...]


class Outbox:
    """Frames waiting to be written; `batches` yields all of them at each write, or
    `write_through` hands them to a sender that can write at once."""

    def __init__(self) -> None:
        self._batch = pb.MuxFrames()
        self._ready = asyncio.Event()
        self._closed = False
        self._send: Callable[[pb.MuxFrames], bool] | None = None
        self._loop: asyncio.AbstractEventLoop  # set with _send
        self._scheduled = False
        self._written: asyncio.Future[None] | None = None

    def put(self, stream_id: int, **kind: Any) -> None:
        """Queues a frame of `stream_id` whose `kind` is one of MuxFrame's oneof fields.
        Built in place in the next message: a MuxFrame of its own would be copied into
        it again, once per relayed token."""
        self._batch.frames.add(stream_id=stream_id, **kind)
        self.wake()

    def put_at_once(self, stream_id: int, **kind: Any) -> None:
        """As `put`, for a frame that a stream waits on (its open, its first message):
        on a quiet outbox written through, it is written now rather than at the end of
        the loop's turn: the rest of the turn's work (a router's hedge race, a handler's
        next step) no longer runs ahead of it, 0.1-0.2 ms of a first token at concurrency
        1 over edge, router and engine (`make bench`, at_once). Frames put later in the
        same turn still go in one message, so a burst of opens costs one write more, not
        one a stream."""
        quiet = self._send is not None and not self._scheduled and not self._batch.frames
        self.put(stream_id, **kind)  # schedules the turn's write, which takes later frames
        if quiet and self._send(self._batch):  # type: ignore[misc]
            self._batch = pb.MuxFrames()

    @property
    def pending(self) -> int:
        """Frames put and not yet handed to a write."""
        return len(self._batch.frames)

    def close(self) -> None:
        """`batches` ends once what is queued is written (`write_through` returns)."""
        self._closed = True
        self.wake()

    def wake(self) -> None:
        """There is something to write, or a sender that could not write now can."""
        if self._send is None:
            self._ready.set()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._write)

    async def batches(self) -> AsyncIterator[pb.MuxFrames]:
        while True:
            await self._ready.wait()
            self._ready.clear()
            batch, self._batch = self._batch, pb.MuxFrames()
            if batch.frames:
                yield batch
            if self._closed and not self._batch.frames:
                return

    async def write_through(self, send: Callable[[pb.MuxFrames], bool]) -> None:
        """Instead of `batches`, for a sender that writes within the call (a socket):
        `send` gets each batch from a loop callback that the first frame after a write
        schedules, so every frame put in the meantime (a decode step of every stream)
        still goes in one message, and no task is resumed to write it (the reader of
        `batches` cost ~10 us a message, timed in process). `send` returns False when
        it cannot write now (a backed-up socket), and calls `wake` once it can. Returns
        once the outbox is closed and all of it sent."""
        self._loop = asyncio.get_running_loop()
        self._send = send
        self._written = self._loop.create_future()
        self.wake()  # what was queued before
        try:
            await self._written
        finally:
            self._send = None

    def _write(self) -> None:
        self._scheduled = False
        if self._send is None or self._written is None:
            return
        if self._batch.frames:
            if not self._send(self._batch):
                return  # held: the sender wakes us when it can write
            self._batch = pb.MuxFrames()
        if self._closed and not self._written.done():
            self._written.set_result(None)


def to_pairs(metadata: Iterable[tuple[str, str | bytes]]) -> list[pb.MetadataPair]:
    return [
        pb.MetadataPair(key=k, value=v if isinstance(v, bytes) else v.encode()) for k, v in metadata
    ]


def from_pairs(pairs: Iterable[pb.MetadataPair]) -> Metadata:
    # gRPC's own rule: keys ending in -bin carry bytes, the others text.
    return tuple((p.key, p.value if p.key.endswith("-bin") else p.value.decode()) for p in pairs)
