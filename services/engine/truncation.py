"""Responses' `truncation: "auto"`, done where tokens are counted: in the engine.

The edge cannot count a conversation's tokens (it has no tokenizer), so it asks the
engine (ChatInput.drop_oldest_to_fit) to drop the oldest turns until the prompt and the
completion fit the model's context, as OpenAI does. Backends count; this decides what
goes.
"""

from __future__ import annotations

from services.proto_gen.tera.v1 import engine_pb2 as pb

# Kept whatever the length: they are the instructions, not the conversation.
_INSTRUCTIONS = ("system", "developer")


def fits(prompt_tokens: int, requested: int | None, context: int) -> bool:
    """Whether the prompt leaves room for the completion (one token when none is asked)."""
    return prompt_tokens + (requested or 1) <= context


def requested_max_tokens(request: pb.GenerateRequest) -> int | None:
    s = request.sampling
    return s.max_tokens if s.HasField("max_tokens") else None


def drop_oldest_turn(chat: pb.ChatInput) -> bool:
    """Drops the oldest message after the leading instructions, in place, and the tool
    results that would then lead (a result without its call breaks chat templates).

    Returns False, dropping nothing, when only the instructions and the last message are
    left: the request cannot be shortened, and fails as a too-long one.
    """
    messages = chat.messages
    first = next((i for i, m in enumerate(messages) if m.role not in _INSTRUCTIONS), None)
    if first is None or first >= len(messages) - 1:
        return False
    del messages[first]
    while first < len(messages) - 1 and messages[first].role == "tool":
        del messages[first]
    return True
