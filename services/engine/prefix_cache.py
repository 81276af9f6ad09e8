"""What an engine's prefix cache holds, published to every router that watches it.

A backend with a prefix cache reports chunks stored and evicted (named by
services.common.prefix_hash); each WatchPrefixCache call gets a snapshot of what is
resident, then every change. A watcher that falls behind gets a fresh snapshot instead of
a gap, so a router's picture is never silently wrong.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

from services.common.prefix_hash import CHUNK_TOKENS
from services.proto_gen.tera.v1 import engine_pb2 as pb

# Names per snapshot message: 4,096 x 8 bytes, well under gRPC's message limit.
SNAPSHOT_BATCH = 4096
# Changes a watcher may have queued before it is resynchronised with a snapshot.
QUEUE_LIMIT = 10_000


class _Watcher:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[pb.PrefixCacheEvent] = asyncio.Queue(QUEUE_LIMIT)
        self.lagging = False

    def put(self, event: pb.PrefixCacheEvent) -> None:
        if self.lagging:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.lagging = True
            self.queue = asyncio.Queue(QUEUE_LIMIT)
            self.queue.put_nowait(pb.PrefixCacheEvent())  # wakes the watcher


class PrefixCacheFeed:
    """Resident chunk names (with a count: two cache blocks may share a name) and the
    watchers to tell of changes. Call from the event loop only."""

    def __init__(self) -> None:
        self._resident: dict[int, int] = {}
        self._watchers: set[_Watcher] = set()

    def __len__(self) -> int:
        return len(self._resident)

    def __contains__(self, name: int) -> bool:
        return name in self._resident

    def stored(self, names: Iterable[int]) -> None:
        new = []
        for name in names:
            count = self._resident.get(name, 0)
            self._resident[name] = count + 1
            if not count:
                new.append(name)
        if new:
            self._publish(pb.PrefixCacheEvent(stored=new, chunk_tokens=CHUNK_TOKENS))

    def removed(self, names: Iterable[int]) -> None:
        gone = []
        for name in names:
            count = self._resident.get(name, 0)
            if count > 1:
                self._resident[name] = count - 1
            elif count:
                del self._resident[name]
                gone.append(name)
        if gone:
            self._publish(pb.PrefixCacheEvent(removed=gone, chunk_tokens=CHUNK_TOKENS))

    def cleared(self) -> None:
        self._resident.clear()
        self._publish(pb.PrefixCacheEvent(reset=True, chunk_tokens=CHUNK_TOKENS))

    async def watch(self) -> AsyncIterator[pb.PrefixCacheEvent]:
        watcher = _Watcher()
        self._watchers.add(watcher)
        try:
            while True:
                # Snapshot and registration happen with no await between them: no
                # change can fall in the gap.
                watcher.lagging = False
                for event in self._snapshot():
                    yield event
                while not watcher.lagging:
                    event = await watcher.queue.get()
                    if not watcher.lagging:
                        yield event
        finally:
            self._watchers.discard(watcher)

    def _snapshot(self) -> list[pb.PrefixCacheEvent]:
        names = list(self._resident)
        batches = [names[i : i + SNAPSHOT_BATCH] for i in range(0, len(names), SNAPSHOT_BATCH)]
        events = [pb.PrefixCacheEvent(stored=b, chunk_tokens=CHUNK_TOKENS) for b in batches]
        if not events:
            events = [pb.PrefixCacheEvent(chunk_tokens=CHUNK_TOKENS)]
        events[0].reset = True
        return events

    def _publish(self, event: pb.PrefixCacheEvent) -> None:
        for watcher in self._watchers:
            watcher.put(event)
