"""Request fields shared by chat and completions, and their translation to the proto.

Field order follows OpenAI's spec; Tera's extras (top_k, min_p, repetition_penalty,
structured_outputs) come after. Unknown fields are ignored, as OpenAI does.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.common.bounded import clip
from services.common.wire import OPTIONAL_SAMPLING_FIELDS
from services.edge.errors import FieldError
from services.proto_gen.tera.v1 import engine_pb2 as pb

MAX_STOP_SEQUENCES = 4
# Model names travel in gRPC metadata (tera-model): no name is longer.
MAX_MODEL_CHARS = 256
# The engine matches every stop sequence against the output's tail at each step.
MAX_STOP_CHARS = 1024
# Integers travel as 32-bit proto fields: anything larger is refused as a 400 here,
# not overflowed into a 500 later.
INT32_MAX = 2**31 - 1


class OpenAIModel(BaseModel):
    # Strict: JSON types as OpenAI checks them ("yes" is no boolean, "1" no number).
    model_config = ConfigDict(extra="ignore", protected_namespaces=(), strict=True)


class StreamOptions(OpenAIModel):
    include_usage: bool | None = None


class StructuredOutputs(OpenAIModel):
    """Tera extra, as in vLLM: constrain the output to a regex, choice, schema or grammar."""

    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredOutputs:
        given = [
            k
            for k in ("json_", "regex", "choice", "grammar", "json_object")
            if getattr(self, k) is not None
        ]
        if len(given) != 1:
            # The location already names this object.
            raise FieldError("", "set exactly one of json, regex, choice, grammar, json_object")
        return self

    def to_proto(self) -> pb.StructuredOutput:
        if self.json_ is not None:
            schema = self.json_ if isinstance(self.json_, str) else json.dumps(self.json_)
            return pb.StructuredOutput(json_schema=schema)
        if self.regex is not None:
            return pb.StructuredOutput(regex=self.regex)
        if self.choice is not None:
            return pb.StructuredOutput(choice=pb.ChoiceList(values=self.choice))
        if self.grammar is not None:
            return pb.StructuredOutput(grammar=self.grammar)
        return pb.StructuredOutput(json_object=True)


Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class SamplingRequest(OpenAIModel):
    """What chat and completions requests have in common."""

    model: str = Field(min_length=1, max_length=MAX_MODEL_CHARS)
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    max_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    n: int | None = Field(None, ge=1, le=INT32_MAX)
    presence_penalty: Penalty | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    user: str | None = None
    # Tera extras.
    top_k: int | None = Field(None, ge=-1, le=INT32_MAX)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)
    min_tokens: int | None = Field(None, ge=0, le=INT32_MAX)
    ignore_eos: bool | None = None
    structured_outputs: StructuredOutputs | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        if isinstance(v, list) and any(s == "" for s in v):
            raise ValueError("stop sequences must not be empty")
        if any(len(s) > MAX_STOP_CHARS for s in ([v] if isinstance(v, str) else v or [])):
            raise ValueError(f"stop sequences must be at most {MAX_STOP_CHARS} characters")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _token_id_keys(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for key in v or {}:
            if not key.isdigit() or int(key) > INT32_MAX:
                raise ValueError(f"keys must be token ids, got {clip(key)!r}")
        return v

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> SamplingRequest:
        if self.stream_options is not None and not self.stream:
            raise FieldError("stream_options", "stream_options is only allowed when stream is true")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def generate_request(
        self, request_id: str, model: str, max_tokens: int | None, output: pb.OutputOptions
    ) -> pb.GenerateRequest:
        """The proto with what chat and completions share; they add their input."""
        request = pb.GenerateRequest(
            request_id=request_id,
            model=model,
            sampling=self._sampling_proto(max_tokens),
            output=output,
        )
        structured = self.structured_proto()
        if structured is not None:
            request.structured.CopyFrom(structured)
        return request

    def structured_proto(self) -> pb.StructuredOutput | None:
        return None if self.structured_outputs is None else self.structured_outputs.to_proto()

    def _sampling_proto(self, max_tokens: int | None) -> pb.SamplingParams:
        params = pb.SamplingParams(
            stop=self.stop_list(), n=self.n or 1, ignore_eos=bool(self.ignore_eos)
        )
        for name in OPTIONAL_SAMPLING_FIELDS:
            value = getattr(self, name)
            if value is not None:
                setattr(params, name, value)
        if max_tokens is not None:
            params.max_tokens = max_tokens
        for token_id, bias in (self.logit_bias or {}).items():
            params.logit_bias[int(token_id)] = bias
        return params


Role = Literal["system", "developer", "user", "assistant", "tool"]
