"""Structured outputs across a resume: the grammar goes on from where the cut stream was.

vLLM's own structured outputs would start the grammar at its root for a continuation
(prompt + emitted tokens), so the continued JSON would start over (Dynamo's failure).
Instead a continuation leaves vLLM's structured outputs off and asks for this logits
processor (SamplingParams.extra_args): it compiles the same grammar with the same
xgrammar backend vLLM uses, accepts the emitted tokens, then masks the logits at each
step and accepts each sampled token. The frontend checks beforehand that the emitted
tokens fit the grammar (the processor runs inside the engine core, where an exception
would take the engine down).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch
import xgrammar as xgr
from vllm.sampling_params import SamplingParams
from vllm.tokenizers import cached_tokenizer_from_config
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor
from vllm.v1.structured_output.backend_types import StructuredOutputOptions
from vllm.v1.structured_output.backend_xgrammar import XgrammarBackend
from vllm.v1.structured_output.request import get_structured_output_key
from vllm.v1.structured_output.utils import choice_as_grammar

EXTRA_ARG = "tera_resumed_grammar"
# The processor class, by the name vLLM loads it under (engine argument).
PROCESSOR = f"{__name__}:ResumedGrammar"


def grammar_key(params: SamplingParams) -> tuple[str, str]:
    """(kind, spec) of a request's structured outputs, as xgrammar compiles them."""
    kind, spec = get_structured_output_key(params.structured_outputs)  # type: ignore[arg-type]
    if kind == StructuredOutputOptions.CHOICE:  # vLLM turns choices into a grammar
        return StructuredOutputOptions.GRAMMAR.name, choice_as_grammar(json.loads(spec))
    return kind.name, spec


def xgrammar_backend(vllm_config: Any, tokenizer: Any = None) -> XgrammarBackend:
    tokenizer = tokenizer or cached_tokenizer_from_config(model_config=vllm_config.model_config)
    vocab_size = vllm_config.model_config.get_vocab_size()
    return XgrammarBackend(vllm_config, tokenizer=tokenizer, vocab_size=vocab_size)


def fits(backend: XgrammarBackend, key: tuple[str, str], emitted: list[int]) -> bool:
    grammar = backend.compile_grammar(StructuredOutputOptions[key[0]], key[1])
    return grammar.accept_tokens("resume-check", emitted)


class ResumedGrammar(AdapterLogitsProcessor):
    """Per request that asks for it: the grammar, advanced over the emitted tokens."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        super().__init__(vllm_config, device, is_pin_memory)
        self._vllm_config = vllm_config
        self._backend: XgrammarBackend | None = None

    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params: SamplingParams) -> Callable | None:
        spec = (params.extra_args or {}).get(EXTRA_ARG)
        if spec is None:
            return None
        if self._backend is None:
            self._backend = xgrammar_backend(self._vllm_config)
        grammar = self._backend.compile_grammar(StructuredOutputOptions[spec["kind"]], spec["spec"])
        grammar.accept_tokens("resume", list(spec["emitted"]))  # checked by the frontend
        return _Masked(grammar, self._backend.allocate_token_bitmask(1))


class _Masked:
    def __init__(self, grammar: Any, bitmask: torch.Tensor) -> None:
        self._grammar = grammar
        self._bitmask = bitmask
        self._seen = 0

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        if len(output_ids) > self._seen:
            self._grammar.accept_tokens("resume", output_ids[self._seen :])
            self._seen = len(output_ids)
        if self._grammar.is_terminated():
            return logits
        self._grammar.fill_bitmask(self._bitmask, 0)
        row = logits.unsqueeze(0).to(torch.float32)
        xgr.apply_token_bitmask_inplace(row, self._bitmask.to(row.device))
        logits.copy_(row[0].to(logits.dtype))
        return logits
