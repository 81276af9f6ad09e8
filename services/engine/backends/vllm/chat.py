"""Prepares a chat request: template rendering, tool and reasoning parsers, sampling."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.parser import Parser
from vllm.sampling_params import RequestOutputKind

from services.engine.backends.vllm.inputs import chat_request
from services.engine.backends.vllm.outputs import OutputTranslator
from services.engine.backends.vllm.parsing import ChoiceParser
from services.engine.backends.vllm.prepare import (
    LoadedModel,
    Prepared,
    effective_max_tokens,
    tokenize_params,
    top_logprobs,
)
from services.engine.backends.vllm.profiles import ChatProfile, needs_parsing
from services.engine.truncation import drop_oldest_turn, fits, requested_max_tokens
from services.proto_gen.tera.v1 import engine_pb2 as pb


@dataclasses.dataclass(frozen=True)
class _Parsers:
    """Makes the profile's Parser for one request: each choice needs its own instance."""

    profile: ChatProfile
    tokenizer: Any
    model_config: Any
    template_kwargs: dict[str, Any] | None
    request: ChatCompletionRequest
    prompt_ids: Sequence[int]

    def new(self) -> Parser:
        return self.profile.parser_cls(
            self.tokenizer,
            self.request.tools,
            chat_template_kwargs=self.template_kwargs,
            model_config=self.model_config,
        )

    def choice(self) -> ChoiceParser:
        return ChoiceParser(self.new(), self.request, self.prompt_ids)

    def reasoning_kwargs(self) -> dict[str, Any]:
        """Tells vLLM whether the prompt already ended the reasoning (structured
        outputs start after it)."""
        ended = self.request.resolve_reasoning_ended(self.new(), self.prompt_ids)
        return {
            "reasoning_ended": ended,
            "reasoning_parser_kwargs": {"chat_template_kwargs": self.template_kwargs},
        }


async def prepare_chat(
    model: LoadedModel, profile: ChatProfile, request: pb.GenerateRequest
) -> Prepared:
    engine = model.engine
    req, chat_params, prompt = await _render(engine, profile, request)
    requested = requested_max_tokens(request)
    while request.chat.drop_oldest_to_fit and not fits(
        len(prompt["prompt_token_ids"]), requested, model.max_model_len
    ):
        # truncation "auto": re-rendered after each drop, since the template's own
        # tokens around each message are part of what must fit.
        if not drop_oldest_turn(request.chat):
            break  # cannot be shortened: effective_max_tokens refuses it
        req, chat_params, prompt = await _render(engine, profile, request)
    prompt_ids = prompt["prompt_token_ids"]
    max_tokens = effective_max_tokens(request, len(prompt_ids), model.max_model_len, "messages")
    parsers = _Parsers(
        profile,
        engine.renderer.get_tokenizer(),
        engine.model_config,
        chat_params.chat_template_kwargs,
        req,
        prompt_ids,
    )
    parsing = needs_parsing(profile, req)
    if parsing:
        # Sets the constraint that forces required/named tool calls.
        req = parsers.new().adjust_request(req)
        parsers = dataclasses.replace(parsers, request=req)
    params = req.to_sampling_params(max_tokens, model.defaults)
    params.output_kind = RequestOutputKind.DELTA
    reasoning = parsing and profile.has_reasoning_parser
    translator = OutputTranslator(
        top_logprobs=top_logprobs(request), parser_factory=parsers.choice if parsing else None
    )
    return Prepared(prompt, params, translator, parsers.reasoning_kwargs() if reasoning else {})


async def _render(
    engine: Any, profile: ChatProfile, request: pb.GenerateRequest
) -> tuple[ChatCompletionRequest, Any, Any]:
    """The request as vLLM's, its chat parameters, and its rendered prompt."""
    req = chat_request(request)
    tools = [t.model_dump() for t in req.tools] if req.tools else None
    chat_params = req.build_chat_params(profile.chat_template, "auto").with_defaults(
        {"tools": tools, "tokenize": False}
    )
    _, (prompt,) = await engine.renderer.render_chat_async(
        [list(req.messages)], chat_params, tokenize_params(engine, chat=True)
    )
    return req, chat_params, prompt
