"""Typed stream deltas and the assembled result, independent of the generated code."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tera_client._gen.tera.v1 import engine_pb2 as pb

_FINISH = {
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_TOOL_CALLS: "tool_calls",
    pb.FINISH_REASON_CONTENT_FILTER: "content_filter",
    pb.FINISH_REASON_ABORT: "abort",
}


@dataclass(frozen=True)
class ToolCallDelta:
    index: int
    id: str  # set on a call's first delta
    name: str  # set on a call's first delta
    arguments: str  # appended across deltas


@dataclass(frozen=True)
class Delta:
    """New output of one choice; `finish_reason` is set on the choice's last delta."""

    index: int
    text: str
    reasoning_text: str
    tool_calls: tuple[ToolCallDelta, ...]
    finish_reason: str | None
    num_tokens: int

    @classmethod
    def from_proto(cls, d: pb.ChoiceDelta) -> Delta:
        calls = tuple(ToolCallDelta(t.index, t.id, t.name, t.arguments) for t in d.tool_calls)
        reason = _FINISH.get(d.finish_reason)
        return cls(d.index, d.text, d.reasoning_text, calls, reason, d.num_tokens)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int

    @classmethod
    def from_proto(cls, u: pb.Usage) -> Usage:
        return cls(u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.reasoning_tokens)


@dataclass
class ToolCall:
    id: str = ""
    name: str = ""
    arguments: str = ""

    def parsed_arguments(self) -> Any:
        return json.loads(self.arguments)


@dataclass
class Choice:
    index: int
    text: str = ""
    reasoning_text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, delta: Delta) -> None:
        self.text += delta.text
        self.reasoning_text += delta.reasoning_text
        for part in delta.tool_calls:
            while len(self.tool_calls) <= part.index:
                self.tool_calls.append(ToolCall())
            call = self.tool_calls[part.index]
            call.id = call.id or part.id
            call.name = call.name or part.name
            call.arguments += part.arguments
        self.finish_reason = delta.finish_reason or self.finish_reason


@dataclass
class Completion:
    """The whole answer: choices in index order and the usage of the call."""

    choices: list[Choice]
    usage: Usage | None

    @property
    def text(self) -> str:
        return self.choices[0].text if self.choices else ""

    def json(self) -> Any:
        """The first choice's text parsed as JSON (structured output)."""
        return json.loads(self.text)
