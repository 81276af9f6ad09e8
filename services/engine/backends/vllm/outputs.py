"""Turns vLLM's DELTA RequestOutputs into tera.v1 GenerateResponse messages."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from vllm.logprobs import Logprob
from vllm.outputs import CompletionOutput, RequestOutput

from services.common.wire import FINISH_REASON_BY_NAME
from services.engine.backends.vllm.parsing import ChoiceParser, tool_call_deltas
from services.proto_gen.tera.v1 import engine_pb2 as pb


@dataclass
class _ChoiceState:
    parser: ChoiceParser | None
    text_offset: int = 0
    tokens: int = 0
    echoed: bool = False


@dataclass
class OutputTranslator:
    """Per-request state: parsers, text offsets, token counts and the echoed prompt."""

    top_logprobs: int | None = None
    echo_text: str | None = None
    parser_factory: Callable[[], ChoiceParser] | None = None
    _choices: dict[int, _ChoiceState] = field(default_factory=dict)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    # A continuation's prompt ends with the emitted tokens: they count as completion.
    prompt_offset: int = 0
    # Set when the stream must end before vLLM says so (a continuation's stop string).
    finished: bool = False

    def translate(self, out: RequestOutput) -> pb.GenerateResponse:
        self.prompt_tokens = len(out.prompt_token_ids or ()) - self.prompt_offset
        self.cached_tokens = min(out.num_cached_tokens or 0, self.prompt_tokens)
        response = pb.GenerateResponse()
        for completion in out.outputs:
            delta = self._choice(completion)
            if delta is not None:
                response.choices.append(delta)
        if out.finished:
            response.usage.CopyFrom(self.usage())
            stats = out.metrics
            if stats is not None and getattr(stats, "scheduled_ts", 0):
                response.timings.queue_seconds = max(stats.scheduled_ts - stats.queued_ts, 0.0)
                response.timings.first_token_seconds = stats.first_token_latency
        return response

    def usage(self) -> pb.Usage:
        return pb.Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=sum(c.tokens for c in self._choices.values()),
            cached_tokens=self.cached_tokens,
            reasoning_tokens=sum(
                c.parser.reasoning_tokens() for c in self._choices.values() if c.parser
            ),
        )

    def translate_choice(self, completion: CompletionOutput) -> pb.ChoiceDelta | None:
        return self._choice(completion)

    def _state(self, index: int) -> _ChoiceState:
        state = self._choices.get(index)
        if state is None:
            parser = self.parser_factory() if self.parser_factory else None
            state = self._choices[index] = _ChoiceState(parser)
        return state

    def _choice(self, completion: CompletionOutput) -> pb.ChoiceDelta | None:
        state = self._state(completion.index)
        finish = completion.finish_reason
        delta = pb.ChoiceDelta(
            index=completion.index,
            num_tokens=len(completion.token_ids),
            token_ids=completion.token_ids,
        )
        if state.parser is None:
            delta.text = self._echo(state) + completion.text
        else:
            parsed = state.parser.feed(completion.text, completion.token_ids, finish is not None)
            finish = state.parser.finish_reason(finish)
            if parsed is not None:
                delta.text = parsed.content or ""
                delta.reasoning_text = parsed.reasoning or ""
                delta.tool_calls.extend(tool_call_deltas(parsed))
        delta.finish_reason = FINISH_REASON_BY_NAME.get(finish or "", 0)
        if self.top_logprobs is not None and completion.logprobs:
            offset = state.text_offset + len(delta.text) - len(completion.text)
            delta.logprobs.extend(
                _logprobs(completion.token_ids, completion.logprobs, self.top_logprobs, offset)
            )
        state.text_offset += len(delta.text)
        state.tokens += len(completion.token_ids)
        return delta

    def _echo(self, state: _ChoiceState) -> str:
        if self.echo_text is None or state.echoed:
            return ""
        state.echoed = True
        return self.echo_text


def _logprobs(
    token_ids: Sequence[int],
    positions: Sequence[Mapping[int, Logprob] | None],
    top_n: int,
    offset: int,
) -> list[pb.TokenLogprob]:
    """OpenAI semantics: the sampled token, plus the top_n ranked alternatives.

    (vLLM lists the sampled token first and counts it among the top n; we select by
    rank, so a sampled token outside the top n does not push the n-th one out.)
    """
    result = []
    for token_id, position in zip(token_ids, positions, strict=False):
        if position is None or token_id not in position:
            continue
        chosen = position[token_id]
        token = chosen.decoded_token or ""
        top = sorted(
            (lp for lp in position.values() if lp.rank is not None and lp.rank <= top_n),
            key=lambda lp: lp.rank or 0,
        )
        result.append(
            pb.TokenLogprob(
                token=token,
                logprob=max(chosen.logprob, -9999.0),
                bytes=token.encode(),
                text_offset=offset,
                top=[
                    pb.TopLogprob(
                        token=lp.decoded_token or "",
                        logprob=max(lp.logprob, -9999.0),
                        bytes=(lp.decoded_token or "").encode(),
                    )
                    for lp in top
                ],
            )
        )
        offset += len(token)
    return result
