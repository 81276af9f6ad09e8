"""The edge names prompt prefixes per model with the configured tokenizer."""

from __future__ import annotations

from services.common import prefix_hash
from services.common.word_tokens import prompt_token_ids
from services.edge.prefix import PrefixNamer
from services.proto_gen.tera.v1 import engine_pb2 as pb


def _chat(model: str, words: int) -> pb.GenerateRequest:
    text = " ".join(f"w{i}" for i in range(words))
    return pb.GenerateRequest(
        model=model, chat=pb.ChatInput(messages=[pb.ChatMessage(role="system", content=text)])
    )


def test_words_tokenizer_names_what_the_stand_in_caches() -> None:
    namer = PrefixNamer({"stand-in": "words"})
    request = _chat("stand-in", 40)
    names = prefix_hash.decode(namer.names(request) or b"")
    assert names == tuple(prefix_hash.chunk_hashes(prompt_token_ids(request)))
    assert len(names) == 2


def test_no_names_for_unlisted_models_or_short_prompts() -> None:
    namer = PrefixNamer({"stand-in": "words"})
    assert namer.names(_chat("other", 40)) is None
    assert namer.names(_chat("stand-in", 3)) is None
