"""vLLM's block events renamed to portable chunk names (no engine needed)."""

from __future__ import annotations

from vllm.distributed.kv_events import AllBlocksCleared, BlockRemoved, BlockStored

from services.common.prefix_hash import chunk_hashes
from services.engine.backends.vllm.kv_events import BlockRenamer
from services.engine.prefix_cache import PrefixCacheFeed


def _stored(hashes, parent, tokens, size=32, extra=None) -> BlockStored:
    return BlockStored(
        block_hashes=hashes,
        parent_block_hash=parent,
        token_ids=tokens,
        block_size=size,
        lora_id=None,
        medium="GPU",
        lora_name=None,
        extra_keys=extra,
    )


def test_stored_blocks_get_the_names_a_caller_computes_and_removals_follow() -> None:
    feed = PrefixCacheFeed()
    renamer = BlockRenamer(feed)
    tokens = list(range(100, 196))  # 3 blocks of 32 = 6 chunks
    expected = chunk_hashes(tokens)
    renamer.apply(_stored([b"a", b"b"], None, tokens[:64]))
    renamer.apply(_stored([b"c"], b"b", tokens[64:96]))
    renamer.apply(_stored([b"c"], b"b", tokens[64:96]))  # a reuse report: no double count
    assert all(n in feed for n in expected) and len(feed) == 6
    renamer.apply(BlockRemoved(block_hashes=[b"c"], medium="GPU"))
    assert len(feed) == 4 and expected[4] not in feed
    renamer.apply(AllBlocksCleared())
    assert len(feed) == 0


def test_unnameable_blocks_are_left_out() -> None:
    feed = PrefixCacheFeed()
    renamer = BlockRenamer(feed)
    renamer.apply(_stored([b"x"], b"unknown-parent", list(range(32))))
    renamer.apply(_stored([b"y"], None, list(range(32)), extra=[("salt",)]))
    renamer.apply(_stored([b"z"], None, list(range(24)), size=24))
    assert len(feed) == 0
