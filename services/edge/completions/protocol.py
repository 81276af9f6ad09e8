"""Completions request model (OpenAI's createCompletion) and its proto form."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator

from services.edge.errors import FieldError
from services.edge.generation.protocol import INT32_MAX, SamplingRequest
from services.proto_gen.tera.v1 import engine_pb2 as pb

TokenIds = list[Annotated[int, Field(ge=0, le=INT32_MAX)]]


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | TokenIds | list[TokenIds]
    best_of: int | None = Field(None, ge=0, le=20)
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=5)
    suffix: str | None = None
    max_tokens: int | None = Field(16, ge=0, le=INT32_MAX)

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, v: object) -> object:
        if isinstance(v, list) and not v:
            raise ValueError("prompt must not be an empty list")
        if isinstance(v, list) and any(isinstance(p, list) and not p for p in v):
            raise ValueError("token-id prompts must not be empty")
        return v

    @model_validator(mode="after")
    def _unsupported(self) -> CompletionRequest:
        if self.suffix:
            raise FieldError("suffix", "suffix is not supported by Tera's models")
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise FieldError("best_of", "best_of is not supported: it must be unset or equal to n")
        return self

    def prompts(self) -> list[pb.PromptInput]:
        p = self.prompt
        if isinstance(p, str):
            return [pb.PromptInput(text=p)]
        if all(isinstance(x, int) for x in p):
            return [pb.PromptInput(token_ids=pb.TokenIds(ids=p))]  # type: ignore[arg-type]
        return [
            pb.PromptInput(text=x)
            if isinstance(x, str)
            else pb.PromptInput(token_ids=pb.TokenIds(ids=x))
            for x in p
        ]

    def to_proto(
        self, request_id: str, model: str, prompt: pb.PromptInput, max_tokens: int | None
    ) -> pb.GenerateRequest:
        output = pb.OutputOptions(
            logprobs=self.logprobs is not None,
            top_logprobs=self.logprobs or 0,
            echo=bool(self.echo),
            skip_special_tokens=True,
        )
        request = self.generate_request(request_id, model, max_tokens, output)
        request.prompt.CopyFrom(prompt)
        return request
