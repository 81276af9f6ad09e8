"""The stand-in engine's tokenization: whitespace words, each word's id a hash of it.

A chat's tokens are, per message, a role token then its words, so an earlier turn's
tokens prefix a later turn's. The stand-in computes its simulated prefix cache with it;
the edge and the tests name stand-in prompts' prefixes with it.
"""

from __future__ import annotations

import hashlib

from services.proto_gen.tera.v1 import engine_pb2 as pb


def word_token_ids(text: str) -> list[int]:
    return [
        int.from_bytes(hashlib.blake2b(w.encode(), digest_size=4).digest(), "little")
        for w in text.split()
    ]


def prompt_token_ids(request: pb.GenerateRequest) -> list[int]:
    """The stand-in's tokenization of a request (callers use it to name prefixes)."""
    if request.WhichOneof("input") == "chat":
        ids: list[int] = []
        for m in request.chat.messages:
            ids += word_token_ids(f"<|{m.role}|> {m.content}")
        return ids
    if request.prompt.WhichOneof("prompt") == "token_ids":
        return list(request.prompt.token_ids.ids)
    return word_token_ids(request.prompt.text)
