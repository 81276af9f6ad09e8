"""Responses input items: their request models, their stored form, and the one
translation from items to the engine's chat messages.

Items are validated once (`InputItem`), then kept as plain dicts in OpenAI's resource
shape (ids and statuses filled in): the shape stored, listed by input_items, and
translated to chat messages. Output items use the same shape, so a stored conversation
(earlier inputs and outputs) and a new request's input share one translation, as in
vLLM's `construct_input_messages`.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag

from services.edge.errors import FieldError
from services.edge.generation.protocol import OpenAIModel
from services.proto_gen.tera.v1 import engine_pb2 as pb

Item = dict[str, Any]
TEXT_PARTS = ("input_text", "output_text", "refusal", "summary_text", "reasoning_text")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class TextPart(OpenAIModel):
    type: Literal["input_text", "output_text", "refusal"]
    text: str | None = None
    refusal: str | None = None


class MessageItem(OpenAIModel):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[TextPart]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallItem(OpenAIModel):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputItem(OpenAIModel):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[TextPart]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class ReasoningText(OpenAIModel):
    type: Literal["summary_text", "reasoning_text"]
    text: str


class ReasoningItem(OpenAIModel):
    type: Literal["reasoning"]
    id: str | None = None
    summary: list[ReasoningText] = Field(default_factory=list)
    content: list[ReasoningText] | None = None
    encrypted_content: None = None  # encrypted reasoning is not offered


SUPPORTED = ("message", "function_call", "function_call_output", "reasoning")


def item_type(value: Any) -> str | None:
    """The item's kind (a message when untyped); None, a validation error, if unsupported."""
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in SUPPORTED else None


def check_item_types(items: Any) -> None:
    """Names the first unsupported input item (input[i]) before pydantic's union does."""
    for i, value in enumerate(items if isinstance(items, list) else ()):
        if item_type(value) is None:
            kind = value.get("type") if isinstance(value, dict) else value
            raise FieldError(f"input[{i}]", f"input items of type {kind!r} are not supported")
        is_message = isinstance(value, dict) and value.get("type", "message") == "message"
        content = value.get("content") if is_message else None
        for j, part in enumerate(content if isinstance(content, list) else ()):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in ("input_text", "output_text", "refusal"):
                raise FieldError(
                    f"input[{i}].content[{j}]",
                    f"content parts of type {kind!r} are not supported: this model takes text",
                )


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(item_type),
]


def _parts(content: str | list[TextPart], kind: str) -> list[Item]:
    if isinstance(content, str):
        return [_text_part(kind, content)]
    return [_text_part(p.type, p.text or p.refusal or "") for p in content]


def _text_part(kind: str, text: str) -> Item:
    if kind == "refusal":
        return {"type": "refusal", "refusal": text}
    if kind == "output_text":
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"type": "input_text", "text": text}


def resource(item: MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem) -> Item:
    """An input item in the stored shape: ids and statuses as OpenAI returns them."""
    if isinstance(item, MessageItem):
        kind = "output_text" if item.role == "assistant" else "input_text"
        return {
            "id": item.id or new_id("msg"),
            "type": "message",
            "role": item.role,
            "content": _parts(item.content, kind),
            "status": item.status or "completed",
        }
    if isinstance(item, ReasoningItem):
        out = item.model_dump(exclude_none=True)
        return {**out, "id": item.id or new_id("rs")}
    out = item.model_dump(exclude_none=True)
    if isinstance(item, FunctionCallOutputItem):
        out["output"] = item.output if isinstance(item.output, str) else _text(out["output"])
    prefix = "fc" if item.type == "function_call" else "fco"
    return {**out, "id": item.id or new_id(prefix), "status": item.status or "completed"}


def items_chars(items: list[Item]) -> int:
    """About the characters the engine is sent for these items: their chat messages'
    size, not the stored JSON's (ids, and logprobs on stored output, are not sent)."""
    return sum(m.ByteSize() for m in to_messages(None, items))


def _text(parts: list[Item]) -> str:
    return "".join(p.get("text") or p.get("refusal") or "" for p in parts)


def to_messages(instructions: str | None, items: list[Item]) -> list[pb.ChatMessage]:
    """Items (stored shape) to chat messages. An assistant turn spread over several items
    (reasoning, then text, then calls) becomes one assistant message."""
    messages = [pb.ChatMessage(role="system", content=instructions)] if instructions else []
    for item in items:
        kind = item["type"]
        last = messages[-1] if messages and messages[-1].role == "assistant" else None
        if kind == "function_call_output":
            messages.append(
                pb.ChatMessage(role="tool", tool_call_id=item["call_id"], content=item["output"])
            )
        elif kind == "function_call":
            target = last or _append(messages, pb.ChatMessage(role="assistant"))
            call = {k: item[k] for k in ("name", "arguments")}
            target.tool_calls.add(id=item["call_id"], **call)
        elif kind == "reasoning":
            parts = item.get("content") or item.get("summary") or []
            messages.append(pb.ChatMessage(role="assistant", reasoning_content=_text(parts)))
        elif item["role"] != "assistant":
            messages.append(pb.ChatMessage(role=item["role"], content=_text(item["content"])))
        elif last is not None and not last.HasField("content") and not last.tool_calls:
            last.content = _text(item["content"])
        else:
            messages.append(pb.ChatMessage(role="assistant", content=_text(item["content"])))
    return messages


def _append(messages: list[pb.ChatMessage], message: pb.ChatMessage) -> pb.ChatMessage:
    messages.append(message)
    return message
