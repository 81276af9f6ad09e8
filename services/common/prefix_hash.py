"""Tera's portable prefix hash: names prompt prefixes the same way on every process.

A prompt's token ids are cut into chunks of CHUNK_TOKENS; chunk i is named by a 64-bit
hash of (the name of chunk i-1, its token ids), so a name stands for the whole prefix up
to and including its chunk. Engines translate their own cache's block hashes into these
names (vLLM's hashes depend on its block size and a per-process seed, so a router could
not recompute them); callers that hold the token ids send the names of their prompt in
the `tera-prefix-hashes-bin` metadata, and the router matches them without decoding the
request. Only full chunks are named: a partial last chunk is never cached either.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

CHUNK_TOKENS = 16
# At most this many names travel with a request (4,096 tokens, 2 KiB of metadata): a
# longer shared prefix rarely changes which replica wins.
MAX_CHUNKS = 256
METADATA_KEY = "tera-prefix-hashes-bin"
ROOT = 0


def chunk_hashes(
    token_ids: Sequence[int], parent: int = ROOT, limit: int = MAX_CHUNKS
) -> list[int]:
    """Names of the full chunks of token_ids, chained from parent."""
    names = []
    full = min(len(token_ids) // CHUNK_TOKENS, limit)
    for i in range(full):
        chunk = token_ids[i * CHUNK_TOKENS : (i + 1) * CHUNK_TOKENS]
        digest = hashlib.blake2b(
            struct.pack(f"<Q{CHUNK_TOKENS}I", parent, *chunk), digest_size=8
        ).digest()
        parent = int.from_bytes(digest, "little")
        names.append(parent)
    return names


def encode(names: Sequence[int]) -> bytes:
    return struct.pack(f"<{len(names)}Q", *names[:MAX_CHUNKS])


def decode(raw: bytes) -> tuple[int, ...]:
    """The names in a metadata value; malformed input reads as no names."""
    count = min(len(raw) // 8, MAX_CHUNKS)
    return struct.unpack_from(f"<{count}Q", raw) if count else ()
