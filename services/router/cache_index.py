"""The router's view of each engine's prefix cache, fed by the engine's own events.

Each replica has a PrefixIndex: the chunk names (services.common.prefix_hash) its engine
reports resident, bounded by an LRU so a router's memory stays fixed whatever engines
report. follow_prefix_cache keeps one index current from the engine's WatchPrefixCache
stream; a broken stream empties the index (the router then knows nothing rather than
something stale) until the resubscription's snapshot arrives.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence

import grpc

from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc

log = logging.getLogger("tera.router.cache")

# 256k names ≈ 4M tokens of prefix per replica, about 30 MiB of Python objects.
DEFAULT_CAPACITY = 262_144


class PrefixIndex:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._capacity = capacity
        self._names: OrderedDict[int, None] = OrderedDict()
        self.live = False  # a snapshot has arrived since the stream (re)started

    def __len__(self) -> int:
        return len(self._names)

    def apply(self, event: pb.PrefixCacheEvent) -> None:
        names = self._names
        if event.reset:
            names.clear()
            self.live = True
        for name in event.stored:
            names[name] = None
            names.move_to_end(name)
        for name in event.removed:
            names.pop(name, None)
        while len(names) > self._capacity:
            names.popitem(last=False)

    def clear(self) -> None:
        self._names.clear()
        self.live = False

    def match(self, names: Sequence[int]) -> int:
        """How many leading names of a request are resident (its cached prefix, in chunks)."""
        held = self._names
        for i, name in enumerate(names):
            if name not in held:
                return i
        return len(names)


async def follow_prefix_cache(
    stub: Callable[[], pb_grpc.EngineStub], index: PrefixIndex, address: str, retry_s: float
) -> None:
    """Keeps index current until cancelled; stops for good on an engine without a cache.
    `stub` gives the replica's current stub (its channel changes with a renewed cert)."""
    while True:
        try:
            async for event in stub().WatchPrefixCache(pb.WatchPrefixCacheRequest()):
                index.apply(event)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                log.info("replica %s publishes no prefix cache", address)
                return
        index.clear()
        await asyncio.sleep(retry_s)
