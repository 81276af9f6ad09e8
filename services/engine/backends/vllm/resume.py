"""Continuing a cut stream (GenerateRequest.continuation) from its emitted tokens.

vLLM is given the prompt ids plus the emitted ids, with max_tokens and min_tokens lowered
by the emitted count and no stop strings. The text is not vLLM's: the choice's text
comes from vLLM's own incremental detokenizer built for the *original* request (prompt,
stop strings, min_tokens, hold-back), replayed over the emitted tokens and then fed the
new ones. So a multi-byte character split at the cut comes out whole, a stop string that
straddles the cut still stops (and text held back for it is not lost), and the replay
through the OutputTranslator puts the tool-call/reasoning parsers, text offsets, token
counts and echo exactly where the cut stream left them; nothing emitted is sent again.

Structured outputs (and forced tool calls) continue through resumed_logits.py's
logits processor, the grammar advanced over the emitted tokens; so do frequency and
presence penalties. Not resumable here
(FAILED_PRECONDITION, so the router ends the stream with an explicit error): n > 1, and
structured outputs that only start after the reasoning (see the README).
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import grpc
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.v1.engine.detokenizer import IncrementalDetokenizer

from services.engine.backends.vllm.outputs import OutputTranslator
from services.engine.backends.vllm.prepare import LoadedModel, Prepared
from services.engine.backends.vllm.resumed_logits import EXTRA_ARG, fits, grammar_key
from services.engine.errors import EngineError
from services.proto_gen.tera.v1 import engine_pb2 as pb


def _refuse(why: str) -> EngineError:
    return EngineError(grpc.StatusCode.FAILED_PRECONDITION, f"cannot resume this stream: {why}")


def continue_prepared(
    model: LoadedModel, prepared: Prepared, request: pb.GenerateRequest
) -> Prepared:
    """The prepared request, turned into the continuation of its cut stream."""
    params = prepared.params
    progress = list(request.continuation.choices)
    if params.n != 1 or len(progress) != 1 or progress[0].index != 0:
        raise _refuse("n > 1 is not resumable on the vLLM backend")
    emitted = list(progress[0].token_ids)
    if progress[0].finish_reason or len(emitted) >= (params.max_tokens or 0):
        raise _refuse("the choice had already finished")
    prompt_ids = list(prepared.prompt["prompt_token_ids"])
    logits = _logits_args(model, prepared, emitted)
    text = _ContinuedText(model.engine.get_tokenizer(), prompt_ids, params)
    prepared.translator.prompt_offset = len(emitted)
    text.replay(emitted, prepared.translator)
    continued = params.clone()
    continued.max_tokens = params.max_tokens - len(emitted)  # type: ignore[operator]
    continued.min_tokens = max(params.min_tokens - len(emitted), 0)
    continued.stop = []
    continued.output_text_buffer_length = 0
    if logits:
        continued.structured_outputs = None  # vLLM would restart it at the root
        continued.extra_args = {**(continued.extra_args or {}), EXTRA_ARG: logits}
    prompt = {k: v for k, v in prepared.prompt.items() if k != "prompt"}
    prompt["prompt_token_ids"] = prompt_ids + emitted
    translator = _ContinuedTranslator(prepared.translator, text)
    return dataclasses.replace(prepared, prompt=prompt, params=continued, translator=translator)  # type: ignore[arg-type]


def _logits_args(model: LoadedModel, prepared: Prepared, emitted: list[int]) -> dict:
    """What resumed_logits.py must do for this continuation (nothing: {})."""
    params = prepared.params
    args: dict = {"emitted": emitted}
    if params.frequency_penalty or params.presence_penalty:
        args["penalties"] = True
    if params.structured_outputs is not None:
        args.update(_grammar(model, prepared, emitted))
    return args if len(args) > 1 else {}


def _grammar(model: LoadedModel, prepared: Prepared, emitted: list[int]) -> dict:
    gated = model.engine.vllm_config.structured_outputs_config.reasoning_parser
    if gated and prepared.generate_kwargs.get("reasoning_ended") is False:
        raise _refuse("structured outputs that start after the reasoning are not resumable")
    kind, spec = grammar_key(prepared.params)
    if not fits(model.xgrammar, (kind, spec), emitted):
        raise _refuse("the emitted tokens do not fit the request's structured outputs")
    return {"kind": kind, "spec": spec}


class _ContinuedText:
    """One choice's text across the cut, by vLLM's detokenizer for the original request."""

    def __init__(self, tokenizer: Any, prompt_ids: list[int], params: Any) -> None:
        original = SimpleNamespace(
            request_id="resume",
            prompt_token_ids=prompt_ids,
            prompt_embeds=None,
            sampling_params=params,
        )
        self._detok = IncrementalDetokenizer.from_new_request(tokenizer, original)  # type: ignore[arg-type]

    def replay(self, emitted: list[int], translator: OutputTranslator) -> None:
        """Streams the emitted tokens as vLLM did, one per step, discarding the output."""
        for token_id in emitted:
            if self._detok.update([token_id], False) is not None:
                raise _refuse("the emitted text had already stopped")
            text = self._detok.get_next_output_text(False, True)
            translator.translate_choice(CompletionOutput(0, text, [token_id], None, None))

    def next(self, completion: CompletionOutput) -> tuple[CompletionOutput, bool]:
        """vLLM's new tokens as the original stream would have had them; True once a
        stop string ended the choice."""
        before = self._detok.num_output_tokens()
        reason = completion.finish_reason
        stop = self._detok.update(list(completion.token_ids), reason == "stop")
        kept = self._detok.num_output_tokens() - before
        finished = reason is not None or stop is not None
        out = dataclasses.replace(
            completion,
            text=self._detok.get_next_output_text(finished, True),
            token_ids=list(completion.token_ids)[:kept],
            logprobs=completion.logprobs[:kept] if completion.logprobs else completion.logprobs,
            finish_reason="stop" if stop is not None else reason,
            stop_reason=stop if stop is not None else completion.stop_reason,
        )
        return out, stop is not None


@dataclasses.dataclass
class _ContinuedTranslator:
    inner: OutputTranslator
    text: _ContinuedText
    finished: bool = False

    def translate(self, out: RequestOutput) -> pb.GenerateResponse:
        completions = []
        for completion in out.outputs:
            continued, stopped = self.text.next(completion)
            completions.append(continued)
            self.finished = self.finished or stopped
        out.outputs = completions
        out.finished = out.finished or self.finished
        return self.inner.translate(out)
