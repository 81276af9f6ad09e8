"""Turns vLLM's DELTA RequestOutputs into tera.v1 GenerateResponse messages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from vllm.logprobs import Logprob
from vllm.outputs import CompletionOutput, RequestOutput

from services.proto_gen.tera.v1 import engine_pb2 as pb

_FINISH = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "abort": pb.FINISH_REASON_ABORT,
    "tool_calls": pb.FINISH_REASON_TOOL_CALLS,
}


@dataclass
class _ChoiceState:
    text_offset: int = 0
    tokens: int = 0
    echoed: bool = False


@dataclass
class OutputTranslator:
    """Per-request state: text offsets, token counts and the echoed prompt."""

    top_logprobs: int | None = None
    echo_text: str | None = None
    _choices: dict[int, _ChoiceState] = field(default_factory=dict)
    prompt_tokens: int = 0
    cached_tokens: int = 0

    def translate(self, out: RequestOutput) -> pb.GenerateResponse:
        self.prompt_tokens = len(out.prompt_token_ids or ())
        self.cached_tokens = out.num_cached_tokens or 0
        response = pb.GenerateResponse()
        for completion in out.outputs:
            response.choices.append(self._choice(completion))
        if out.finished:
            response.usage.CopyFrom(self.usage())
        return response

    def usage(self) -> pb.Usage:
        return pb.Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=sum(c.tokens for c in self._choices.values()),
            cached_tokens=self.cached_tokens,
        )

    def _choice(self, completion: CompletionOutput) -> pb.ChoiceDelta:
        state = self._choices.setdefault(completion.index, _ChoiceState())
        text = completion.text
        if self.echo_text is not None and not state.echoed:
            text = self.echo_text + text
            state.echoed = True
        delta = pb.ChoiceDelta(
            index=completion.index,
            text=text,
            num_tokens=len(completion.token_ids),
            finish_reason=_FINISH.get(completion.finish_reason or "", 0),
        )
        if self.top_logprobs is not None and completion.logprobs:
            offset = state.text_offset + len(text) - len(completion.text)
            delta.logprobs.extend(
                _logprobs(completion.token_ids, completion.logprobs, self.top_logprobs, offset)
            )
        state.text_offset += len(text)
        state.tokens += len(completion.token_ids)
        return delta


def _logprobs(
    token_ids: Sequence[int],
    positions: Sequence[Mapping[int, Logprob] | None],
    top_n: int,
    offset: int,
) -> list[pb.TokenLogprob]:
    result = []
    for token_id, position in zip(token_ids, positions, strict=False):
        if position is None:
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
