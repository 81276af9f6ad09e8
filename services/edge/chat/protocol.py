"""Chat completions request model (OpenAI's createChatCompletion) and its proto form."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, model_validator

from services.common.bounded import clip
from services.edge.errors import FieldError
from services.edge.generation.protocol import INT32_MAX, OpenAIModel, Role, SamplingRequest
from services.proto_gen.tera.v1 import engine_pb2 as pb


class TextPart(OpenAIModel):
    type: Literal["text"]
    text: str


class RefusalPart(OpenAIModel):
    type: Literal["refusal"]
    refusal: str


class FunctionCall(OpenAIModel):
    name: str
    arguments: str


class ToolCall(OpenAIModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(OpenAIModel):
    role: Role
    content: str | list[TextPart | RefusalPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCall] | None = None
    # Accepted back from an earlier turn (Tera's reasoning output).
    reasoning_content: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _content_parts_are_text(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("content"), list):
            for part in data["content"]:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind not in ("text", "refusal"):
                    raise FieldError(
                        "content",
                        f"content parts of type {kind!r} are not supported: this model "
                        "takes text only",
                    )
        return data

    @model_validator(mode="after")
    def _role_rules(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise FieldError("tool_call_id", "messages with role 'tool' need a tool_call_id")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise FieldError("content", f"messages with role '{self.role}' need content")
        return self

    def to_proto(self) -> pb.ChatMessage:
        msg = pb.ChatMessage(
            role=self.role,
            name=self.name or "",
            tool_call_id=self.tool_call_id or "",
            reasoning_content=self.reasoning_content or "",
        )
        if isinstance(self.content, str):
            msg.content = self.content
        elif self.content:
            msg.parts.extend(
                pb.ContentPart(type="text", text=p.text if isinstance(p, TextPart) else p.refusal)
                for p in self.content
            )
        for call in self.tool_calls or ():
            msg.tool_calls.add(
                id=call.id, name=call.function.name, arguments=call.function.arguments
            )
        return msg


class FunctionDefinition(OpenAIModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(OpenAIModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(OpenAIModel):
    name: str


class NamedToolChoice(OpenAIModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(OpenAIModel):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise FieldError("json_schema", "response_format of type json_schema needs json_schema")
        return self


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    parallel_tool_calls: bool | None = True
    response_format: ResponseFormat | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    tools: list[ChatTool] | None = None
    reasoning_effort: str | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    audio: dict[str, Any] | None = None
    # Tera extra: keyword arguments for the model's chat template.
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _cross_field_rules(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise FieldError("top_logprobs", "top_logprobs needs logprobs set to true")
        if self.audio is not None or "audio" in (self.modalities or ()):
            raise FieldError("modalities", "audio output is not supported: use /v1/audio/speech")
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            raise FieldError("tool_choice", "tool_choice needs tools")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {t.function.name for t in self.tools or ()}
            if self.tool_choice.function.name not in names:
                raise FieldError(
                    "tool_choice",
                    f"tool_choice names the function {clip(self.tool_choice.function.name)!r}, "
                    "which is not in tools",
                )
        if self.structured_outputs and self.response_format and self.response_format.type != "text":
            raise FieldError(
                "structured_outputs", "set either response_format or structured_outputs, not both"
            )
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def to_proto(self, request_id: str, model: str, max_tokens: int | None) -> pb.GenerateRequest:
        output = pb.OutputOptions(
            logprobs=bool(self.logprobs),
            top_logprobs=self.top_logprobs or 0,
            skip_special_tokens=True,
        )
        request = self.generate_request(request_id, model, max_tokens, output)
        request.chat.CopyFrom(self._chat_proto())
        if self.tools:
            request.tools.CopyFrom(self._tools_proto())
        return request

    def prompt_chars(self) -> int:
        return sum(len(m.content) if isinstance(m.content, str) else 0 for m in self.messages)

    def _chat_proto(self) -> pb.ChatInput:
        chat = pb.ChatInput(messages=[m.to_proto() for m in self.messages])
        if self.chat_template_kwargs:
            chat.chat_template_kwargs_json = json.dumps(self.chat_template_kwargs)
        if self.reasoning_effort:
            chat.reasoning_effort = self.reasoning_effort
        return chat

    def _tools_proto(self) -> pb.ToolOptions:
        options = pb.ToolOptions(parallel_tool_calls=self.parallel_tool_calls is not False)
        for tool in self.tools or ():
            f = tool.function
            options.tools.add(
                name=f.name,
                description=f.description or "",
                parameters_json=json.dumps(f.parameters or {"type": "object", "properties": {}}),
                strict=bool(f.strict),
            )
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice):
            options.choice.function_name = choice.function.name
        else:
            options.choice.mode = {
                None: pb.ToolChoice.MODE_AUTO,
                "auto": pb.ToolChoice.MODE_AUTO,
                "none": pb.ToolChoice.MODE_NONE,
                "required": pb.ToolChoice.MODE_REQUIRED,
            }[choice]
        return options

    def structured_proto(self) -> pb.StructuredOutput | None:
        if self.structured_outputs is not None:
            return self.structured_outputs.to_proto()
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return pb.StructuredOutput(json_object=True)
        schema = (fmt.json_schema.schema_ if fmt.json_schema else None) or {}
        return pb.StructuredOutput(json_schema=json.dumps(schema))
