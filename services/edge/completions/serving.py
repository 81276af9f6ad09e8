"""Completions: one upstream stream per prompt, merged into OpenAI JSON or SSE chunks.

Choice indexes follow OpenAI: prompt p, sample i -> index p * n + i.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from services.edge.completions.protocol import CompletionRequest
from services.edge.errors import OpenAIError
from services.edge.generation.merge import merge_streams
from services.edge.generation.serving import (
    FAILED,
    FINISH_REASONS,
    GenerationServing,
    RequestContext,
    add_usage,
    usage_json,
)
from services.edge.sse import DONE, ChunkFramer, dumps, frame, open_stream
from services.proto_gen.tera.v1 import engine_pb2 as pb


class CompletionServing(GenerationServing):
    async def create(self, ctx: RequestContext, body: CompletionRequest) -> web.StreamResponse:
        resolved = self.gate.resolve(ctx.http, body.model)
        async with self.gate.guard(ctx.http, ctx.headers, resolved) as admit:
            max_tokens = self.gate.max_tokens(resolved, body.requested_max_tokens)
            self.check_limits(body.n, max_tokens)
            prompts = body.prompts()
            body.model = resolved.canonical
            requests = [
                body.to_proto(f"{ctx.request_id}-{p}", prompt, max_tokens)
                for p, prompt in enumerate(prompts)
            ]
            body.model = resolved.reported
            chars = sum(len(p.text) + len(p.token_ids.ids) * 4 for p in prompts)
            n = (body.n or 1) * len(prompts)
            await admit(self.gate.estimate(chars, max_tokens, None) * n)
            streams = [
                self.stream(ctx, request, self.routing_key(ctx.http, body.user, prompt.text))
                for request, prompt in zip(requests, prompts, strict=True)
            ]
            merged = merge_streams(streams)  # type: ignore[arg-type]
            try:
                first = await anext(merged, None)
                if body.stream:
                    return await self._stream(ctx, body, first, merged)
                return await self._complete(ctx, body, first, merged, len(prompts))
            finally:
                await merged.aclose()  # type: ignore[attr-defined]

    async def _complete(
        self,
        ctx: RequestContext,
        body: CompletionRequest,
        first: Any,
        merged: AsyncIterator[Any],
        prompt_count: int,
    ) -> web.Response:
        n = body.n or 1
        choices = {i: _Choice() for i in range(n * prompt_count)}
        usage = pb.Usage()
        item = first
        while item is not None:
            prompt_index, message = item
            for delta in message.choices:
                choices[prompt_index * n + delta.index].add(delta)
            if message.HasField("usage"):
                add_usage(usage, message.usage)
            item = await anext(merged, None)
        if any(not c.finish_reason for c in choices.values()):
            raise OpenAIError(
                502,
                "The model stream ended before the answer was complete.",
                type="server_error",
                code="truncated",
            )
        logprobs = body.logprobs is not None
        payload = {
            "id": f"cmpl-{ctx.request_id}",
            "object": "text_completion",
            "created": ctx.created,
            "model": body.model,
            "choices": [c.json(i, logprobs) for i, c in sorted(choices.items())],
            "usage": usage_json(usage),
        }
        return web.json_response(payload, dumps=dumps, headers=ctx.response_headers())

    async def _stream(
        self, ctx: RequestContext, body: CompletionRequest, first: Any, merged: AsyncIterator[Any]
    ) -> web.StreamResponse:
        response = await open_stream(ctx.http, ctx.response_headers())
        framer = ChunkFramer(
            {
                "id": f"cmpl-{ctx.request_id}",
                "object": "text_completion",
                "created": ctx.created,
                "model": body.model,
            },
            include_usage=body.include_usage,
        )
        n = body.n or 1
        unfinished = set(range(n * len(body.prompts())))
        logprobs = body.logprobs is not None
        usage = pb.Usage()
        try:
            item = first
            while item is not None:
                prompt_index, message = item
                await response.write(
                    b"".join(
                        framer.choices(
                            dumps(
                                _stream_choice(prompt_index * n + d.index, d, logprobs, unfinished)
                            )
                        )
                        for d in message.choices
                    )
                )
                if message.HasField("usage"):
                    add_usage(usage, message.usage)
                item = await anext(merged, None)
            if unfinished:
                raise OpenAIError(
                    502,
                    "The model stream ended before the answer was complete.",
                    type="server_error",
                    code="truncated",
                )
        except OpenAIError as exc:
            failed = [
                dumps({"index": i, "text": "", "logprobs": None, "finish_reason": FAILED})
                for i in sorted(unfinished)
            ]
            await response.write(b"".join(framer.choices(c) for c in failed) + frame(exc.body()))
            return response
        if body.include_usage:
            await response.write(framer.usage(usage_json(usage)))
        await response.write(DONE)
        return response


def _stream_choice(
    index: int, d: pb.ChoiceDelta, logprobs: bool, unfinished: set[int]
) -> dict[str, Any]:
    if d.finish_reason:
        unfinished.discard(index)
    return {
        "index": index,
        "text": d.text,
        "logprobs": _logprobs(d.logprobs) if logprobs else None,
        "finish_reason": FINISH_REASONS[d.finish_reason],
    }


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
            "finish_reason": FINISH_REASONS[self.finish_reason],
        }
