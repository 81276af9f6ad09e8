"""Prepares a completion request: a text or token-id prompt, echo, sampling."""

from __future__ import annotations

from typing import Any

from vllm.renderers.inputs.preprocess import parse_model_prompt
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM

from services.engine.backends.vllm.inputs import completion_request
from services.engine.backends.vllm.outputs import OutputTranslator
from services.engine.backends.vllm.prepare import (
    LoadedModel,
    Prepared,
    effective_max_tokens,
    tokenize_params,
    top_logprobs,
)
from services.engine.errors import invalid_argument
from services.proto_gen.tera.v1 import engine_pb2 as pb


async def prepare_completion(model: LoadedModel, request: pb.GenerateRequest) -> Prepared:
    engine = model.engine
    req = completion_request(request)
    raw, text = _prompt(engine, request.prompt)
    (prompt,) = await engine.renderer.render_cmpl_async([raw], tokenize_params(engine, chat=False))
    prompt_len = len(prompt["prompt_token_ids"])
    max_tokens = effective_max_tokens(request, prompt_len, model.max_model_len, "prompt")
    params = req.to_sampling_params(max_tokens, model.defaults)
    params.output_kind = RequestOutputKind.DELTA
    translator = OutputTranslator(
        top_logprobs=top_logprobs(request),
        echo_text=text if request.output.echo else None,
    )
    return Prepared(prompt, params, translator, {})


def _prompt(engine: AsyncLLM, p: pb.PromptInput) -> tuple[Any, str]:
    """vLLM's raw prompt, and its text (echoed when asked)."""
    if p.WhichOneof("prompt") != "token_ids":
        return parse_model_prompt(engine.model_config, p.text), p.text
    ids = list(p.token_ids.ids)
    vocab = engine.model_config.get_vocab_size()
    if any(i >= vocab for i in ids):
        raise invalid_argument(
            f"token ids must be below the vocabulary size {vocab}", param="prompt"
        )
    return {"prompt_token_ids": ids}, engine.get_tokenizer().decode(ids)
