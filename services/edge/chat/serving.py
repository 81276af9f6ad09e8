"""Chat completions: proto stream -> OpenAI chat.completion JSON or SSE chunks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.common.wire import FINISH_REASON_NAMES
from services.edge.chat.protocol import ChatCompletionRequest
from services.edge.generation.admission import Admitted
from services.edge.generation.render import FAILED, FINISH_JSON, Renderer
from services.edge.generation.serving import GenerationServing, RequestContext, Upstream
from services.edge.sse import json_string
from services.proto_gen.tera.v1 import engine_pb2 as pb


class ChatServing(GenerationServing[ChatCompletionRequest]):
    def measure(self, ctx: RequestContext, body: ChatCompletionRequest) -> tuple[int, int]:
        return body.prompt_chars(), 1

    def upstreams(
        self, ctx: RequestContext, body: ChatCompletionRequest, admitted: Admitted
    ) -> list[Upstream]:
        first = body.messages[0].content
        request = body.to_proto(ctx.request_id, admitted.model, admitted.max_tokens)
        return [Upstream(request, first if isinstance(first, str) else "")]

    def renderer(self, body: ChatCompletionRequest) -> Renderer:
        return ChatRenderer(logprobs=bool(body.logprobs))


class ChatRenderer(Renderer):
    id_prefix = "chatcmpl"
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    usage_needs_upstream = True

    def choice(self) -> _Choice:
        return _Choice()

    def opening(self, choices: int) -> list[dict[str, Any]]:
        return [
            {
                "index": i,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
            for i in range(choices)
        ]

    def delta(self, index: int, d: pb.ChoiceDelta) -> dict[str, Any]:
        delta: dict[str, Any] = {}
        if d.text:
            delta["content"] = d.text
        if d.reasoning_text:
            delta["reasoning_content"] = d.reasoning_text
            delta["reasoning"] = d.reasoning_text
        if d.tool_calls:
            delta["tool_calls"] = [_tool_call_delta(c) for c in d.tool_calls]
        return {
            "index": index,
            "delta": delta,
            "logprobs": {"content": _logprobs(d.logprobs), "refusal": None}
            if self.logprobs
            else None,
            "finish_reason": FINISH_REASON_NAMES[d.finish_reason],
        }

    def delta_json(self, index: int, d: pb.ChoiceDelta) -> str:
        if self.logprobs or d.reasoning_text or d.tool_calls:
            return super().delta_json(index, d)
        # Plain text, the common case: the same JSON as `delta`'s, written directly.
        content = f'{{"content":{json_string(d.text)}}}' if d.text else "{}"
        finish = FINISH_JSON[d.finish_reason]
        return f'{{"index":{index},"delta":{content},"logprobs":null,"finish_reason":{finish}}}'

    def failed(self, index: int) -> dict[str, Any]:
        return {"index": index, "delta": {}, "logprobs": None, "finish_reason": FAILED}


def _tool_call_delta(c: pb.ToolCallDelta) -> dict[str, Any]:
    call: dict[str, Any] = {"index": c.index}
    function: dict[str, Any] = {"arguments": c.arguments}
    if c.id:
        call["id"] = c.id
        call["type"] = "function"
    if c.name:
        function["name"] = c.name
    call["function"] = function
    return call


def _logprobs(items: Any) -> list[dict[str, Any]]:
    return [
        {
            "token": lp.token,
            "logprob": lp.logprob,
            "bytes": list(lp.bytes),
            "top_logprobs": [
                {"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)} for t in lp.top
            ],
        }
        for lp in items
    ]


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    logprobs: list[pb.TokenLogprob] = field(default_factory=list)
    finish_reason: int = pb.FINISH_REASON_UNSPECIFIED

    def add(self, d: pb.ChoiceDelta) -> None:
        self.text.append(d.text)
        self.reasoning.append(d.reasoning_text)
        self.logprobs.extend(d.logprobs)
        for c in d.tool_calls:
            call = self.tool_calls.setdefault(
                c.index,
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": ""}},
            )
            call["function"]["arguments"] += c.arguments
        if d.finish_reason:
            self.finish_reason = d.finish_reason

    def json(self, index: int, logprobs: bool) -> dict[str, Any]:
        text = "".join(self.text)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text if text or not self.tool_calls else None,
            "refusal": None,
        }
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        reasoning = "".join(self.reasoning)
        if reasoning:
            message["reasoning_content"] = reasoning
            message["reasoning"] = reasoning
        return {
            "index": index,
            "message": message,
            "logprobs": {"content": _logprobs(self.logprobs), "refusal": None}
            if logprobs
            else None,
            "finish_reason": FINISH_REASON_NAMES[self.finish_reason],
        }
