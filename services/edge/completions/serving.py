"""Completions: one upstream stream per prompt, rendered as OpenAI's text_completion.

Choice indexes follow OpenAI: prompt p, sample i -> index p * n + i.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.common.wire import FINISH_REASON_NAMES
from services.edge.completions.protocol import CompletionRequest
from services.edge.generation.admission import Admitted
from services.edge.generation.render import FAILED, FINISH_JSON, Renderer
from services.edge.generation.serving import GenerationServing, RequestContext, Upstream
from services.edge.sse import json_string
from services.proto_gen.tera.v1 import engine_pb2 as pb


class CompletionServing(GenerationServing[CompletionRequest]):
    def measure(self, ctx: RequestContext, body: CompletionRequest) -> tuple[int, int]:
        prompts = body.prompts()
        return sum(len(p.text) + len(p.token_ids.ids) * 4 for p in prompts), len(prompts)

    def upstreams(
        self, ctx: RequestContext, body: CompletionRequest, admitted: Admitted
    ) -> list[Upstream]:
        return [
            Upstream(
                body.to_proto(f"{ctx.request_id}-{p}", admitted.model, prompt, admitted.max_tokens),
                prompt.text,
            )
            for p, prompt in enumerate(body.prompts())
        ]

    def renderer(self, body: CompletionRequest) -> Renderer:
        return CompletionRenderer(logprobs=body.logprobs is not None)


class CompletionRenderer(Renderer):
    id_prefix = "cmpl"
    object = "text_completion"
    chunk_object = "text_completion"

    def choice(self) -> _Choice:
        return _Choice()

    def delta(self, index: int, delta: pb.ChoiceDelta) -> dict[str, Any]:
        return {
            "index": index,
            "text": delta.text,
            "logprobs": _logprobs(delta.logprobs) if self.logprobs else None,
            "finish_reason": FINISH_REASON_NAMES[delta.finish_reason],
        }

    def delta_json(self, index: int, delta: pb.ChoiceDelta) -> str:
        if self.logprobs:
            return super().delta_json(index, delta)
        # Without logprobs: the same JSON as `delta`'s, written directly.
        finish = FINISH_JSON[delta.finish_reason]
        text = json_string(delta.text)
        return f'{{"index":{index},"text":{text},"logprobs":null,"finish_reason":{finish}}}'

    def failed(self, index: int) -> dict[str, Any]:
        return {"index": index, "text": "", "logprobs": None, "finish_reason": FAILED}


def _logprobs(items: Any) -> dict[str, Any]:
    return {
        "tokens": [lp.token for lp in items],
        "token_logprobs": [lp.logprob for lp in items],
        "top_logprobs": [{t.token: t.logprob for t in lp.top} for lp in items],
        "text_offset": [lp.text_offset for lp in items],
    }


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    logprobs: list[pb.TokenLogprob] = field(default_factory=list)
    finish_reason: int = pb.FINISH_REASON_UNSPECIFIED

    def add(self, d: pb.ChoiceDelta) -> None:
        self.text.append(d.text)
        self.logprobs.extend(d.logprobs)
        if d.finish_reason:
            self.finish_reason = d.finish_reason

    def json(self, index: int, logprobs: bool) -> dict[str, Any]:
        return {
            "index": index,
            "text": "".join(self.text),
            "logprobs": _logprobs(self.logprobs) if logprobs else None,
            "finish_reason": FINISH_REASON_NAMES[self.finish_reason],
        }
