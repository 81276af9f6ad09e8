"""Names of a request's prompt prefix, for the router's cache_aware policy.

The edge decodes every request anyway, so it is where the prompt's token ids can be had
without a second decode: per model, a tokenizer named in the edge config
(`prefix_tokenizers`) renders the chat template and tokenizes, as the engine will; the
names (services.common.prefix_hash) go to the router in metadata. "words" is the
stand-in engine's tokenization. A model without a tokenizer sends no names, and the
router routes it by routing key and load. A rendering that differs from the engine's
(tools, template kwargs) only shortens the match: names are compared from the start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf.json_format import MessageToDict

from services.common import prefix_hash
from services.common.word_tokens import prompt_token_ids
from services.proto_gen.tera.v1 import engine_pb2 as pb

log = logging.getLogger("tera.edge.prefix")

Tokenize = Callable[[pb.GenerateRequest], list[int]]


def _hf(source: str) -> Tokenize:
    from transformers import AutoTokenizer  # only when configured

    tokenizer = AutoTokenizer.from_pretrained(source)

    def tokenize(request: pb.GenerateRequest) -> list[int]:
        kind = request.WhichOneof("input")
        if kind == "chat":
            # As vLLM does: render the template to text, then tokenize without adding
            # special tokens (the template has them).
            messages = [_message(m) for m in request.chat.messages]
            text = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
            return tokenizer.encode(text, add_special_tokens=False)
        if request.prompt.WhichOneof("prompt") == "token_ids":
            return list(request.prompt.token_ids.ids)
        return tokenizer.encode(request.prompt.text)

    return tokenize


def _message(m: pb.ChatMessage) -> dict[str, Any]:
    content = m.content if m.HasField("content") else "".join(p.text for p in m.parts)
    out: dict[str, Any] = {"role": m.role, "content": content}
    if m.tool_calls:
        out["tool_calls"] = [MessageToDict(c) for c in m.tool_calls]
    return out


class PrefixNamer:
    def __init__(self, tokenizers: Mapping[str, str]) -> None:
        self._sources = dict(tokenizers)
        self._loaded: dict[str, Tokenize | None] = {}

    def load(self) -> None:
        """Every configured tokenizer, now: at startup, so a bad name stops the edge
        there and the first request of each model does not pay for the load."""
        for model in self._sources:
            self._tokenizer(model)

    def covers(self, model: str) -> bool:
        return model in self._sources

    def names(self, request: pb.GenerateRequest) -> bytes | None:
        tokenize = self._tokenizer(request.model)
        if tokenize is None:
            return None
        try:
            ids = tokenize(request)
        except Exception as exc:  # a template that rejects the request: no names
            log.debug("no prefix names for %s: %s", request.model, exc)
            return None
        names = prefix_hash.chunk_hashes(ids)
        return prefix_hash.encode(names) if names else None

    def _tokenizer(self, model: str) -> Tokenize | None:
        if model not in self._loaded:
            source = self._sources.get(model)
            self._loaded[model] = (
                None if source is None else prompt_token_ids if source == "words" else _hf(source)
            )
        return self._loaded[model]
