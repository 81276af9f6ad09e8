"""What a continuation needs from the sampler that vLLM would get wrong: the emitted
tokens sit in its prompt, yet they were output.

Structured outputs: vLLM's own would start the grammar at its root for prompt + emitted
tokens, so the continued JSON would start over (Dynamo's failure). Instead a
continuation leaves vLLM's structured outputs off and asks for this logits processor
(SamplingParams.extra_args): it compiles the same grammar with the same xgrammar
backend vLLM uses, accepts the emitted tokens, then masks the logits at each step and
accepts each sampled token. The frontend checks beforehand that the emitted tokens fit
the grammar (the processor runs inside the engine core, where an exception would take
the engine down).

Penalties: vLLM counts frequency and presence penalties over output tokens only, so the
processor subtracts what the emitted tokens add (frequency x count, presence once per
token, not twice once the token recurs). vLLM applies its repetition penalty (prompt +
output, so exact) after custom processors: with both a repetition penalty and a
frequency/presence penalty, the emitted tokens' adjustment is scaled by it, a small
difference from an uncut stream (README).
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

EXTRA_ARG = "tera_resumed"
# The processor class, by the name vLLM loads it under (engine argument).
PROCESSOR = f"{__name__}:ResumedLogits"


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


class ResumedLogits(AdapterLogitsProcessor):
    """Per continuation that asks for it: the grammar advanced over the emitted tokens,
    and the penalties the emitted tokens owe."""

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
        emitted = list(spec["emitted"])
        grammar = bitmask = None
        if spec.get("kind"):
            if self._backend is None:
                self._backend = xgrammar_backend(self._vllm_config)
            kind = StructuredOutputOptions[spec["kind"]]
            grammar = self._backend.compile_grammar(kind, spec["spec"])
            grammar.accept_tokens("resume", emitted)  # checked by the frontend
            bitmask = self._backend.allocate_token_bitmask(1)
        penalties = _Penalties(emitted, params) if spec.get("penalties") else None
        return _Resumed(grammar, bitmask, penalties)


class _Penalties:
    def __init__(self, emitted: list[int], params: SamplingParams) -> None:
        self._emitted = emitted
        self._frequency = params.frequency_penalty
        self._presence = params.presence_penalty
        self._adjust: torch.Tensor | None = None
        self._repaid: set[int] = set()

    def apply(self, new: list[int], logits: torch.Tensor) -> None:
        if self._adjust is None:
            self._adjust = torch.zeros(logits.shape[-1], dtype=torch.float32)
            ids = torch.tensor(self._emitted, dtype=torch.long)
            counts = torch.bincount(ids, minlength=logits.shape[-1]).to(torch.float32)
            self._adjust -= self._frequency * counts + self._presence * (counts > 0)
        for token in set(new) & set(self._emitted) - self._repaid:
            self._adjust[token] += self._presence  # vLLM now charges its presence
            self._repaid.add(token)
        logits += self._adjust.to(logits.device, logits.dtype)


class _Resumed:
    def __init__(self, grammar: Any, bitmask: Any, penalties: _Penalties | None) -> None:
        self._grammar = grammar
        self._bitmask = bitmask
        self._penalties = penalties
        self._seen = 0

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        new = output_ids[self._seen :]
        self._seen = len(output_ids)
        if self._penalties is not None:
            self._penalties.apply(new, logits)
        if self._grammar is None:
            return logits
        if new:
            self._grammar.accept_tokens("resume", new)
        if self._grammar.is_terminated():
            return logits
        self._grammar.fill_bitmask(self._bitmask, 0)
        row = logits.unsqueeze(0).to(torch.float32)
        xgr.apply_token_bitmask_inplace(row, self._bitmask.to(row.device))
        logits.copy_(row[0].to(logits.dtype))
        return logits
