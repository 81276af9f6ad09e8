"""A stand-in model with scripted behaviour, for fault tests and the relay benchmark.

It speaks the real engine contract through the real servicer; only the tokens are fake:
choice i emits "tok0 tok1 ..." at a configured rate, and can fail, hang or start slowly
on cue, as a real replica might.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import grpc

from services.common.word_tokens import prompt_token_ids
from services.engine.backends.base import Backend, BackendLoad
from services.engine.backends.scripted_cache import SimulatedPrefixCache
from services.engine.config import EngineConfig
from services.engine.errors import EngineError, invalid_argument
from services.engine.prefix_cache import PrefixCacheFeed
from services.proto_gen.tera.v1 import engine_pb2 as pb


class ScriptedBackend(Backend):
    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._script = config.scripted
        self._running = 0
        self._requests_seen = 0
        self._created = int(time.time())
        self._cache = (
            SimulatedPrefixCache(
                capacity_chunks=self._script.prefix_cache_chunks,
                prefill_s_per_token=self._script.prefill_ms_per_token / 1000,
            )
            if self._script.prefix_cache_chunks
            else None
        )

    def prefix_cache(self) -> PrefixCacheFeed | None:
        return self._cache.feed if self._cache else None

    async def start(self) -> None:
        await asyncio.sleep(self._script.startup_delay_s)

    async def stop(self) -> None:
        pass

    def models(self) -> list[pb.ModelInfo]:
        return [
            pb.ModelInfo(
                id=self._config.model_id,
                kind=pb.MODEL_KIND_CHAT,
                max_context_length=self._config.max_context_length,
                created=self._created,
                owned_by="tera",
            )
        ]

    def load(self) -> BackendLoad:
        return BackendLoad(running=self._running)

    async def generate(self, request: pb.GenerateRequest) -> AsyncIterator[pb.GenerateResponse]:
        if self._script.exit_on_request:
            os._exit(3)
        self._requests_seen += 1
        self._running += 1
        try:
            async for response in self._script_stream(request):
                yield response
        finally:
            self._running -= 1

    async def _script_stream(
        self, request: pb.GenerateRequest
    ) -> AsyncIterator[pb.GenerateResponse]:
        script = self._script
        if script.hang:
            await asyncio.Event().wait()
        await asyncio.sleep(script.first_token_delay_s)
        cached = await self._cache.prefill(prompt_token_ids(request)) if self._cache else 0
        if script.fail_before_first or self._requests_seen <= script.fail_first_requests:
            raise EngineError(grpc.StatusCode.INTERNAL, "scripted failure before first token")
        s = request.sampling
        max_tokens = s.max_tokens if s.HasField("max_tokens") else script.default_max_tokens
        if _prompt_tokens(request) + max_tokens > self._config.max_context_length:
            raise invalid_argument(
                f"This model's maximum context length is {self._config.max_context_length} tokens.",
                param="max_tokens",
            )
        rate, step_s = script.tokens_per_second, script.step_ms / 1000
        loop = asyncio.get_running_loop()
        started = loop.time()
        i = 0
        while i < max_tokens:
            # Everything due by now goes in one message (at most one wake-up per step),
            # so the stand-in keeps its rate without a timer per token.
            due = max_tokens if rate <= 0 else int((loop.time() - started) * rate) + 1
            batch = range(i, min(max(due, i + 1), max_tokens))
            if script.fail_after_tokens is not None and batch[-1] >= script.fail_after_tokens:
                if i < script.fail_after_tokens:
                    yield self._message(request, range(i, script.fail_after_tokens), max_tokens)
                raise EngineError(
                    grpc.StatusCode.INTERNAL,
                    f"scripted failure after {script.fail_after_tokens} tokens",
                )
            yield self._message(request, batch, max_tokens, cached)
            i = batch[-1] + 1
            if rate > 0 and i < max_tokens:
                await asyncio.sleep(max(started + i / rate - loop.time(), step_s))
            elif rate <= 0:
                await asyncio.sleep(0)

    def _message(
        self, request: pb.GenerateRequest, batch: range, max_tokens: int, cached: int = 0
    ) -> pb.GenerateResponse:
        n = request.sampling.n or 1
        last = batch[-1] == max_tokens - 1
        now_us = int(time.monotonic() * 1e6)
        text = "".join(self._script.token_text.format(i=k, t=now_us) for k in batch)
        response = pb.GenerateResponse(
            choices=[
                pb.ChoiceDelta(
                    index=c,
                    text=text,
                    num_tokens=len(batch),
                    finish_reason=pb.FINISH_REASON_LENGTH if last else 0,
                )
                for c in range(n)
            ]
        )
        if last:
            response.usage.CopyFrom(
                pb.Usage(
                    prompt_tokens=_prompt_tokens(request),
                    completion_tokens=n * max_tokens,
                    cached_tokens=cached,
                )
            )
        return response


def _prompt_tokens(request: pb.GenerateRequest) -> int:
    if request.WhichOneof("input") == "chat":
        return sum(len((m.content or "").split()) + 4 for m in request.chat.messages)
    return len(request.prompt.text.split()) or len(request.prompt.token_ids.ids)
