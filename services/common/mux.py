"""What both ends of GenerateMux share: the outbox that batches frames into messages, and
metadata as frames carry it.

The saving of a multiplexed call is in the outbox: a writer takes every frame queued since
its last write, of any number of streams, as one MuxFrames message, so a decode step of
every stream costs one gRPC message (one read, one wake-up, one sendmsg) instead of one
per stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

from services.proto_gen.tera.v1 import engine_pb2 as pb

GENERATE = "/tera.v1.Engine/Generate"
GENERATE_MUX = "/tera.v1.Engine/GenerateMux"

Metadata = tuple[tuple[str, str | bytes], ...]


class Outbox:
    """Frames waiting to be written; `batches` yields all of them at each write."""

    def __init__(self) -> None:
        self._batch = pb.MuxFrames()
        self._ready = asyncio.Event()
        self._closed = False

    def put(self, stream_id: int, **kind: Any) -> None:
        """Queues a frame of `stream_id` whose `kind` is one of MuxFrame's oneof fields.
        Built in place in the next message: a MuxFrame of its own would be copied into
        it again, once per relayed token."""
        self._batch.frames.add(stream_id=stream_id, **kind)
        self._ready.set()

    def close(self) -> None:
        """`batches` ends once what is queued is written."""
        self._closed = True
        self._ready.set()

    async def batches(self) -> AsyncIterator[pb.MuxFrames]:
        while True:
            await self._ready.wait()
            self._ready.clear()
            batch, self._batch = self._batch, pb.MuxFrames()
            if batch.frames:
                yield batch
            if self._closed and not self._batch.frames:
                return


def to_pairs(metadata: Iterable[tuple[str, str | bytes]]) -> list[pb.MetadataPair]:
    return [
        pb.MetadataPair(key=k, value=v if isinstance(v, bytes) else v.encode()) for k, v in metadata
    ]


def from_pairs(pairs: Iterable[pb.MetadataPair]) -> Metadata:
    # gRPC's own rule: keys ending in -bin carry bytes, the others text.
    return tuple((p.key, p.value if p.key.endswith("-bin") else p.value.decode()) for p in pairs)
