"""What truncation "auto" drops: the oldest turn after the instructions, with the tool
results that would be left without their call, and never the last message."""

from __future__ import annotations

from services.engine.truncation import drop_oldest_turn, fits
from services.proto_gen.tera.v1 import engine_pb2 as pb


def _chat(*roles: str) -> pb.ChatInput:
    return pb.ChatInput(messages=[pb.ChatMessage(role=r, content=r) for r in roles])


def _roles(chat: pb.ChatInput) -> list[str]:
    return [m.role for m in chat.messages]


def test_drops_the_oldest_after_the_instructions() -> None:
    chat = _chat("system", "developer", "user", "assistant", "user")
    assert drop_oldest_turn(chat)
    assert _roles(chat) == ["system", "developer", "assistant", "user"]


def test_a_call_goes_with_its_results() -> None:
    chat = _chat("assistant", "tool", "tool", "assistant", "user")
    assert drop_oldest_turn(chat)
    assert _roles(chat) == ["assistant", "user"]


def test_the_last_message_is_never_dropped() -> None:
    chat = _chat("system", "user")
    assert not drop_oldest_turn(chat)
    assert _roles(chat) == ["system", "user"]
    chat = _chat("assistant", "tool")
    assert drop_oldest_turn(chat) and _roles(chat) == ["tool"]


def test_fits_leaves_room_for_the_completion() -> None:
    assert fits(60, 4, 64) and not fits(61, 4, 64)
    assert fits(63, None, 64) and not fits(64, None, 64)
