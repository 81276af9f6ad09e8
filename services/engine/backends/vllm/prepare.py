"""What chat and completion preparation share: the loaded engine they read, the
prepared request they return, and the context-length check."""

from __future__ import annotations

import dataclasses
from typing import Any

from vllm.renderers.params import TokenizeParams
from vllm.sampling_params import SamplingParams
from vllm.v1.engine.async_llm import AsyncLLM

from services.engine.backends.vllm.inputs import check_context
from services.engine.backends.vllm.outputs import OutputTranslator
from services.proto_gen.tera.v1 import engine_pb2 as pb


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A started AsyncLLM and the figures read off it once at startup."""

    engine: AsyncLLM
    defaults: dict[str, Any]  # sampling defaults from the model's generation_config
    max_model_len: int
    # Checks that a continuation's emitted tokens fit its structured outputs.
    xgrammar: Any = None


@dataclasses.dataclass
class Prepared:
    """A request ready for AsyncLLM.generate, and how to translate its outputs."""

    prompt: Any
    params: SamplingParams
    translator: OutputTranslator
    generate_kwargs: dict[str, Any]


def effective_max_tokens(
    request: pb.GenerateRequest, prompt_len: int, max_model_len: int, prompt_param: str
) -> int:
    s = request.sampling
    requested = s.max_tokens if s.HasField("max_tokens") else None
    return check_context(prompt_len, requested, max_model_len, prompt_param=prompt_param)


def top_logprobs(request: pb.GenerateRequest) -> int | None:
    return request.output.top_logprobs if request.output.logprobs else None


def tokenize_params(engine: AsyncLLM, *, chat: bool) -> TokenizeParams:
    """vLLM's defaults minus its length check: check_context words that error itself."""
    renderer = engine.renderer
    base = renderer.default_chat_tok_params if chat else renderer.default_cmpl_tok_params
    return dataclasses.replace(base, max_total_tokens=None)
