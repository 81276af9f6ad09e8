"""vLLM's KV cache events, renamed for routers and fed to the engine's PrefixCacheFeed.

vLLM publishes block stored/removed events on a ZMQ socket; here it is an ipc socket
private to the engine's pod (no new network port), read by the engine process itself.
vLLM names a block by a hash that depends on its block size and a per-process seed, so
a router could not compute it from a prompt; each stored block's token ids are renamed
with Tera's portable chunk names (services.common.prefix_hash), chained from the
parent block's names, and a removed block's names are looked up by its vLLM hash.
Blocks with extra keys (LoRA, multimodal, cache salt) are not nameable from tokens
alone and are left out: routers just see no match for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import uuid
from typing import Any

import msgspec
import zmq
import zmq.asyncio
from vllm.config.kv_events import KVEventsConfig
from vllm.distributed.kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEventBatch,
)

from services.common.prefix_hash import CHUNK_TOKENS, ROOT, chunk_hashes
from services.engine.prefix_cache import PrefixCacheFeed

log = logging.getLogger("tera.engine.kv_events")

TOPIC = "kv"


def private_endpoint() -> str:
    return f"ipc://{tempfile.gettempdir()}/tera-kv-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def events_config(endpoint: str) -> KVEventsConfig:
    return KVEventsConfig(
        enable_kv_cache_events=True, publisher="zmq", endpoint=endpoint, topic=TOPIC
    )


class BlockRenamer:
    """vLLM block hash -> the portable names of its tokens; feeds stores and removals."""

    def __init__(self, feed: PrefixCacheFeed) -> None:
        self._feed = feed
        self._names: dict[Any, list[int]] = {}

    def apply(self, event: object) -> None:
        if isinstance(event, BlockStored):
            self._stored(event)
        elif isinstance(event, BlockRemoved):
            gone = [n for h in event.block_hashes for n in self._names.pop(h, ())]
            self._feed.removed(gone)
        elif isinstance(event, AllBlocksCleared):
            self._names.clear()
            self._feed.cleared()

    def _stored(self, event: BlockStored) -> None:
        size = event.block_size
        if size <= 0 or size % CHUNK_TOKENS:
            return
        if event.parent_block_hash is None:
            parent = ROOT
        elif event.parent_block_hash in self._names:
            parent = self._names[event.parent_block_hash][-1]
        else:
            return  # a chain we cannot name (its start had extra keys, or came before)
        extra = event.extra_keys or [None] * len(event.block_hashes)
        new: list[int] = []
        for i, (block, keys) in enumerate(zip(event.block_hashes, extra, strict=False)):
            if keys:
                break
            names = self._names.get(block)
            if names is None:
                tokens = event.token_ids[i * size : (i + 1) * size]
                names = chunk_hashes(tokens, parent, limit=size // CHUNK_TOKENS)
                if len(names) * CHUNK_TOKENS != size:
                    break
                self._names[block] = names
                new += names
            parent = names[-1]
        self._feed.stored(new)


class KvEventReader:
    """Reads vLLM's events from its ZMQ socket into a BlockRenamer, on the event loop."""

    def __init__(self, feed: PrefixCacheFeed) -> None:
        self.endpoint = private_endpoint()
        self._renamer = BlockRenamer(feed)
        self._context = zmq.asyncio.Context.instance()
        self._socket = self._context.socket(zmq.SUB)
        # Connected before vLLM binds: ZMQ reconnects, and no early event is lost.
        self._socket.connect(self.endpoint)
        self._socket.setsockopt(zmq.SUBSCRIBE, TOPIC.encode())
        self._decoder = msgspec.msgpack.Decoder(type=KVEventBatch)
        self._task = asyncio.create_task(self._read(), name="vllm kv events")

    async def _read(self) -> None:
        while True:
            _topic, _seq, payload = await self._socket.recv_multipart()
            try:
                batch = self._decoder.decode(payload)
            except msgspec.DecodeError:
                log.warning("undecodable KV event batch (%d bytes)", len(payload))
                continue
            for event in batch.events:
                self._renamer.apply(event)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._socket.close(linger=0)
