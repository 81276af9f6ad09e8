"""Chat completions: proto stream -> OpenAI JSON or SSE chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from services.edge.chat.protocol import ChatCompletionRequest
from services.edge.errors import OpenAIError
from services.edge.generation.serving import (
    FAILED,
    FINISH_REASONS,
    GenerationServing,
    RequestContext,
    first_message,
    usage_json,
)
from services.edge.sse import DONE, ChunkFramer, dumps, frame, open_stream
from services.proto_gen.tera.v1 import engine_pb2 as pb


class ChatServing(GenerationServing):
    async def create(self, ctx: RequestContext, body: ChatCompletionRequest) -> web.StreamResponse:
        resolved = self.gate.resolve(ctx.http, body.model)
        async with self.gate.guard(ctx.http, ctx.headers, resolved) as admit:
            max_tokens = self.gate.max_tokens(resolved, body.requested_max_tokens)
            self.check_limits(body.n, max_tokens)
            body.model = resolved.canonical
            request = body.to_proto(ctx.request_id, max_tokens)
            body.model = resolved.reported
            chars = sum(len(m.content) if isinstance(m.content, str) else 0 for m in body.messages)
            await admit(self.gate.estimate(chars, max_tokens, None) * (body.n or 1))
            key = self.routing_key(ctx.http, body.user, _prompt_prefix(body))
            stream = self.stream(ctx, request, key)
            try:
                first = await first_message(stream)
                if body.stream:
                    return await self._stream(ctx, body, first, stream)
                return await self._complete(ctx, body, first, stream)
            finally:
                await stream.aclose()

    async def _complete(
        self,
        ctx: RequestContext,
        body: ChatCompletionRequest,
        first: pb.GenerateResponse | None,
        stream: AsyncIterator[pb.GenerateResponse],
    ) -> web.Response:
        choices: dict[int, _Choice] = {i: _Choice() for i in range(body.n or 1)}
        usage = pb.Usage()
        message = first
        while message is not None:
            for delta in message.choices:
                choices.setdefault(delta.index, _Choice()).add(delta)
            if message.HasField("usage"):
                usage = message.usage
            message = await anext(stream, None)
        _require_finished(choices)
        payload = {
            "id": f"chatcmpl-{ctx.request_id}",
            "object": "chat.completion",
            "created": ctx.created,
            "model": body.model,
            "choices": [c.json(i, bool(body.logprobs)) for i, c in sorted(choices.items())],
            "usage": usage_json(usage),
        }
        return web.json_response(payload, dumps=dumps, headers=ctx.response_headers())

    async def _stream(
        self,
        ctx: RequestContext,
        body: ChatCompletionRequest,
        first: pb.GenerateResponse | None,
        stream: AsyncIterator[pb.GenerateResponse],
    ) -> web.StreamResponse:
        response = await open_stream(ctx.http, ctx.response_headers())
        framer = ChunkFramer(
            {
                "id": f"chatcmpl-{ctx.request_id}",
                "object": "chat.completion.chunk",
                "created": ctx.created,
                "model": body.model,
            },
            include_usage=body.include_usage,
        )
        n = body.n or 1
        unfinished = set(range(n))
        await response.write(b"".join(framer.choices(_role_choice(i)) for i in range(n)))
        usage: pb.Usage | None = None
        try:
            message = first
            while message is not None:
                await response.write(_chunks(framer, message, bool(body.logprobs), unfinished))
                if message.HasField("usage"):
                    usage = message.usage
                message = await anext(stream, None)
            if unfinished:
                raise OpenAIError(
                    502,
                    "The model stream ended before the answer was complete.",
                    type="server_error",
                    code="truncated",
                )
        except OpenAIError as exc:
            await response.write(_failure(framer, unfinished, exc))
            return response
        if usage is not None and body.include_usage:
            await response.write(framer.usage(usage_json(usage)))
        await response.write(DONE)
        return response


def _prompt_prefix(body: ChatCompletionRequest) -> str:
    first = body.messages[0].content
    return first if isinstance(first, str) else ""


def _role_choice(index: int) -> str:
    return dumps(
        {
            "index": index,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
    )


def _chunks(
    framer: ChunkFramer, message: pb.GenerateResponse, logprobs: bool, unfinished: set[int]
) -> bytes:
    out = []
    for delta in message.choices:
        if delta.finish_reason:
            unfinished.discard(delta.index)
        out.append(framer.choices(dumps(_delta_choice(delta, logprobs))))
    return b"".join(out)


def _delta_choice(d: pb.ChoiceDelta, logprobs: bool) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if d.text:
        delta["content"] = d.text
    if d.reasoning_text:
        delta["reasoning_content"] = d.reasoning_text
        delta["reasoning"] = d.reasoning_text
    if d.tool_calls:
        delta["tool_calls"] = [_tool_call_delta(c) for c in d.tool_calls]
    return {
        "index": d.index,
        "delta": delta,
        "logprobs": {"content": _logprobs(d.logprobs), "refusal": None} if logprobs else None,
        "finish_reason": FINISH_REASONS[d.finish_reason],
    }


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


def _failure(framer: ChunkFramer, unfinished: set[int], exc: OpenAIError) -> bytes:
    choices = [
        dumps({"index": i, "delta": {}, "logprobs": None, "finish_reason": FAILED})
        for i in sorted(unfinished)
    ]
    return b"".join(framer.choices(c) for c in choices) + frame(exc.body())


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
            "finish_reason": FINISH_REASONS[self.finish_reason],
        }


def _require_finished(choices: dict[int, Any]) -> None:
    if any(not c.finish_reason for c in choices.values()):
        raise OpenAIError(
            502,
            "The model stream ended before the answer was complete.",
            type="server_error",
            code="truncated",
        )
