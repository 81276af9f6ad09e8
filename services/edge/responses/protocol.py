"""The Responses request (OpenAI's createResponse) and its translation to the chat proto.

Sampling fields and Tera's extras (top_k, min_p, repetition_penalty) come from the
shared `SamplingRequest`; the conversation becomes a `ChatInput`, function tools the
engine's `ToolOptions`, and `text.format` its structured output, so that router and
engines serve a Responses request exactly as they serve a chat one.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from services.edge.errors import FieldError
from services.edge.generation.protocol import INT32_MAX, OpenAIModel, SamplingRequest
from services.edge.responses.items import (
    InputItem,
    Item,
    MessageItem,
    check_item_types,
    resource,
    to_messages,
)
from services.proto_gen.tera.v1 import engine_pb2 as pb

# OpenAI's `include` values. Logprobs are the one Tera produces; the built-in tools' and
# input images' cannot occur (those tools and inputs are refused), so asking for them is
# harmless and accepted; encrypted reasoning is not offered, and says so.
LOGPROBS = "message.output_text.logprobs"
INCLUDE_NOTHING = {
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
}


def check_includes(values: list[str] | None) -> list[str] | None:
    """`include` as create and retrieve take it (a ValueError names a bad value)."""
    for value in values or ():
        if value == "reasoning.encrypted_content":
            raise ValueError("encrypted reasoning is not offered by Tera")
        if value != LOGPROBS and value not in INCLUDE_NOTHING:
            raise ValueError(f"{value!r} is not a value include takes")
    return values


TOOL_CHOICE_MODES = {
    "auto": pb.ToolChoice.MODE_AUTO,
    "none": pb.ToolChoice.MODE_NONE,
    "required": pb.ToolChoice.MODE_REQUIRED,
}


class FunctionTool(OpenAIModel):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _functions_only(cls, data: Any) -> Any:
        kind = data.get("type") if isinstance(data, dict) else None
        if kind != "function":
            raise FieldError(
                "type",
                f"the built-in tool {kind!r} is not supported: Tera offers function tools only",
            )
        return data

    def json(self) -> dict[str, Any]:
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
            "strict": self.strict if self.strict is not None else True,
        }


class FunctionChoice(OpenAIModel):
    type: Literal["function"]
    name: str


class TextFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> TextFormat:
        if self.type == "json_schema" and (self.schema_ is None or not self.name):
            raise FieldError("", "a json_schema format needs a name and a schema")
        return self


class TextParam(OpenAIModel):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningParam(OpenAIModel):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class ResponseRequest(SamplingRequest):
    input: str | Annotated[list[InputItem], Field(min_length=1)]
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    text: TextParam | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    parallel_tool_calls: bool | None = None
    reasoning: ReasoningParam | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = True
    previous_response_id: str | None = None
    truncation: Literal["auto", "disabled"] | None = None
    background: bool | None = None
    include: list[str] | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @model_validator(mode="before")
    @classmethod
    def _not_offered(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if data.get("background"):
            raise FieldError("background", "background responses are not offered by Tera")
        for name in ("conversation", "prompt"):
            if data.get(name) is not None:
                raise FieldError(name, f"{name} is not supported: use previous_response_id")
        check_item_types(data.get("input"))
        choice = data.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") != "function":
            raise FieldError(
                "tool_choice", f"tool_choice of type {choice.get('type')!r} is not supported"
            )
        return data

    @field_validator("include")
    @classmethod
    def _known_includes(cls, v: list[str] | None) -> list[str] | None:
        return check_includes(v)

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and (
            len(v) > 16 or any(len(k) > 64 or len(x) > 512 for k, x in v.items())
        ):
            raise ValueError("at most 16 pairs, keys up to 64 and values up to 512 characters")
        return v

    @model_validator(mode="after")
    def _cross_field_rules(self) -> ResponseRequest:
        if (self.n or 1) != 1:
            raise FieldError("n", "the Responses API generates one output: n must be 1")
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            raise FieldError("tool_choice", "tool_choice needs tools")
        choice = self.tool_choice
        if isinstance(choice, FunctionChoice) and choice.name not in {
            t.name for t in self.tools or ()
        }:
            raise FieldError(
                "tool_choice",
                f"tool_choice names the function {self.tool_choice.name!r}, which is not in tools",
            )
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_output_tokens or self.max_tokens

    def input_items(self) -> list[Item]:
        """This request's input in the stored shape."""
        if isinstance(self.input, str):
            return [resource(MessageItem(role="user", content=self.input))]
        return [resource(item) for item in self.input]

    def prompt_chars(self) -> int:
        """This request's own text (the serving adds the stored turns' size)."""
        return len(self.model_dump_json(include={"input", "instructions"}))

    @property
    def logprobs(self) -> bool:
        """Logprobs on output_text: asked for by `include`, or implied by a top_logprobs
        count (a count of alternatives is only useful with them)."""
        return LOGPROBS in (self.include or ()) or bool(self.top_logprobs)

    def to_proto(
        self, request_id: str, model: str, max_tokens: int | None, conversation: list[Item]
    ) -> pb.GenerateRequest:
        output = pb.OutputOptions(
            skip_special_tokens=True,
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs or 0,
        )
        request = self.generate_request(request_id, model, max_tokens, output)
        chat = pb.ChatInput(messages=to_messages(self.instructions, conversation))
        if self.reasoning and self.reasoning.effort:
            chat.reasoning_effort = self.reasoning.effort
        # Only the engine can count tokens, so it is the one that drops old turns.
        chat.drop_oldest_to_fit = self.truncation == "auto"
        request.chat.CopyFrom(chat)
        if self.tools:
            request.tools.CopyFrom(self._tools_proto())
        return request

    def _tools_proto(self) -> pb.ToolOptions:
        options = pb.ToolOptions(parallel_tool_calls=self.parallel_tool_calls is not False)
        for tool in self.tools or ():
            options.tools.add(
                name=tool.name,
                description=tool.description or "",
                parameters_json=json.dumps(tool.parameters or {"type": "object", "properties": {}}),
                strict=bool(tool.strict),
            )
        if isinstance(self.tool_choice, FunctionChoice):
            options.choice.function_name = self.tool_choice.name
        else:
            options.choice.mode = TOOL_CHOICE_MODES[self.tool_choice or "auto"]
        return options

    def structured_proto(self) -> pb.StructuredOutput | None:
        if self.structured_outputs is not None:
            return self.structured_outputs.to_proto()
        fmt = self.text.format if self.text else None
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return pb.StructuredOutput(json_object=True)
        return pb.StructuredOutput(json_schema=json.dumps(fmt.schema_ or {}))

    def echo(self) -> dict[str, Any]:
        """The request's settings as the response object repeats them."""
        fmt = self.text.format if self.text and self.text.format else None
        choice = self.tool_choice
        return {
            "instructions": self.instructions,
            "metadata": self.metadata or {},
            "parallel_tool_calls": self.parallel_tool_calls is not False,
            "temperature": 1.0 if self.temperature is None else self.temperature,
            "top_p": 1.0 if self.top_p is None else self.top_p,
            "tool_choice": choice.model_dump()
            if isinstance(choice, FunctionChoice)
            else choice or "auto",
            "tools": [t.json() for t in self.tools or ()],
            "text": {
                "format": fmt.model_dump(by_alias=True, exclude_none=True)
                if fmt
                else {"type": "text"},
                # Echoed as OpenAI does; open models have no verbosity control to map it to.
                "verbosity": (self.text.verbosity if self.text else None) or "medium",
            },
            "reasoning": {"effort": self.reasoning.effort, "summary": self.summary}
            if self.reasoning
            else None,
            "max_output_tokens": self.max_output_tokens,
            "previous_response_id": self.previous_response_id,
            "store": self.store is not False,
            "truncation": self.truncation or "disabled",
            **({"user": self.user} if self.user is not None else {}),  # not nullable
            "background": False,
            "service_tier": "default",
            "top_logprobs": self.top_logprobs or 0,
        }

    @property
    def summary(self) -> str | None:
        """The reasoning summary asked for, if any (`generate_summary` is its old name)."""
        r = self.reasoning
        return (r.summary or r.generate_summary) if r else None
