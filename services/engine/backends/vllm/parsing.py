"""Tool-call and reasoning parsing of a choice's stream, with vLLM's own parsers.

A profile (profiles.py) picks the Parser class; one instance per choice, since parsers
keep streaming state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vllm.entrypoints.generate.base.protocol import DeltaMessage, ExtractedToolCallInformation
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionNamedToolChoiceParam,
    ChatCompletionRequest,
)
from vllm.parser import Parser
from vllm.tool_parsers import ToolParser, ToolParserManager

from services.proto_gen.tera.v1 import engine_pb2 as pb

# For models without a native tool-call format: `required` and named tool choices still
# yield valid calls, through decoding constrained to the tools' JSON schemas; `auto`
# returns plain text.
CONSTRAINED_ONLY = "tera_constrained"


@ToolParserManager.register_module(CONSTRAINED_ONLY)
class ConstrainedOnlyToolParser(ToolParser):
    supports_required_and_named = True

    def extract_tool_calls(
        self, model_output: str, request: ChatCompletionRequest
    ) -> ExtractedToolCallInformation:
        return ExtractedToolCallInformation(tools_called=False, tool_calls=[], content=model_output)

    def extract_tool_calls_streaming(
        self, previous_text: str, current_text: str, delta_text: str, *args: Any, **kwargs: Any
    ) -> DeltaMessage:
        return DeltaMessage(content=delta_text) if delta_text else None  # type: ignore[return-value]


@dataclass
class ChoiceParser:
    """Streams one choice's deltas through its own Parser instance."""

    parser: Parser
    request: ChatCompletionRequest
    prompt_token_ids: Sequence[int]
    tools_streamed: bool = False
    generated: list[int] = field(default_factory=list)

    def feed(self, text: str, token_ids: Sequence[int], finished: bool) -> DeltaMessage | None:
        delta = self.parser.parse_delta(
            delta_text=text,
            delta_token_ids=list(token_ids),
            request=self.request,
            prompt_token_ids=list(self.prompt_token_ids),
            finished=finished,
        )
        self.generated.extend(token_ids)
        if delta is not None and delta.tool_calls:
            if self.request.parallel_tool_calls is False:
                delta.tool_calls = [c for c in delta.tool_calls if c.index == 0]
            self.tools_streamed = self.tools_streamed or bool(delta.tool_calls)
        return delta

    def finish_reason(self, engine_reason: str | None) -> str | None:
        named = isinstance(self.request.tool_choice, ChatCompletionNamedToolChoiceParam)
        if engine_reason == "stop" and self.tools_streamed and not named:
            return "tool_calls"
        return engine_reason

    def reasoning_tokens(self) -> int:
        return self.parser.count_reasoning_tokens(tuple(self.generated))


def tool_call_deltas(delta: DeltaMessage) -> list[pb.ToolCallDelta]:
    calls = []
    for call in delta.tool_calls or ():
        fn = call.function
        calls.append(
            pb.ToolCallDelta(
                index=call.index,
                id=call.id or "",
                name=(fn.name if fn and fn.name else ""),
                arguments=(fn.arguments if fn and fn.arguments else ""),
            )
        )
    return calls
