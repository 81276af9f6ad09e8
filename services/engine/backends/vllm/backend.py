"""Hosts a model in vLLM's AsyncLLM (CPU build here, CUDA build on GPUs)."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator

import grpc
from opentelemetry import trace
from vllm.exceptions import VLLMClientError
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError

from services.common.bounded import clip
from services.common.priority import DEFAULT_RANK
from services.common.telemetry import inject_headers, tracing_enabled
from services.engine.backends.base import Backend, BackendLoad
from services.engine.backends.vllm.chat import prepare_chat
from services.engine.backends.vllm.completion import prepare_completion
from services.engine.backends.vllm.engine import (
    SchedulerSnapshot,
    load_engine,
    shut_down,
    warm_up,
)
from services.engine.backends.vllm.kv_events import KvEventReader
from services.engine.backends.vllm.prepare import LoadedModel, Prepared
from services.engine.backends.vllm.profiles import ChatProfile, build_profiles
from services.engine.backends.vllm.resume import continue_prepared
from services.engine.backends.vllm.resumed_logits import xgrammar_backend
from services.engine.config import EngineConfig
from services.engine.errors import EngineError, invalid_argument
from services.engine.prefix_cache import PrefixCacheFeed
from services.proto_gen.tera.v1 import engine_pb2 as pb

log = logging.getLogger("tera.engine.vllm")


class VllmBackend(Backend):
    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._engine: AsyncLLM | None = None  # set as soon as loaded, so stop() frees it
        self._model: LoadedModel | None = None
        self._scheduler = SchedulerSnapshot()
        self._profiles: dict[str, ChatProfile] = {}
        self._max_model_len = config.max_context_length  # until the engine says
        self._created = int(time.time())
        self._feed = PrefixCacheFeed()
        self._kv_events: KvEventReader | None = None

    def prefix_cache(self) -> PrefixCacheFeed | None:
        return self._feed if self._kv_events else None

    async def start(self) -> None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self._config.vllm.cpu_kv_cache_gib))
        started = time.monotonic()
        if self._config.vllm.kv_events:
            self._kv_events = KvEventReader(self._feed)
        endpoint = self._kv_events.endpoint if self._kv_events else None
        engine = self._engine = await load_engine(self._config, self._scheduler, endpoint)
        self._model = LoadedModel(
            engine,
            defaults=engine.model_config.get_diff_sampling_param(),
            max_model_len=engine.model_config.max_model_len,
            xgrammar=xgrammar_backend(engine.vllm_config, engine.get_tokenizer()),
        )
        self._max_model_len = self._model.max_model_len
        self._profiles = build_profiles(self._config, engine)
        await warm_up(engine)
        log.info(
            "vLLM ready in %.1f s (max_model_len=%d, models=%s)",
            time.monotonic() - started,
            self._max_model_len,
            list(self._profiles),
        )

    async def stop(self) -> None:
        if self._engine is not None:
            await shut_down(self._engine)
            self._engine = None
            self._model = None
        if self._kv_events is not None:
            await self._kv_events.close()

    def models(self) -> list[pb.ModelInfo]:
        return [
            pb.ModelInfo(
                id=model_id,
                kind=pb.MODEL_KIND_CHAT,
                max_context_length=self._max_model_len,
                created=self._created,
                owned_by="tera",
            )
            for model_id in (self._profiles or {self._config.model_id: None})
        ]

    def load(self) -> BackendLoad:
        snapshot = self._scheduler.load
        if self._engine is None:
            return snapshot
        # The scheduler figures lag a step; vLLM's own count of unfinished requests is
        # live (an aborted request leaves it at once).
        return dataclasses.replace(snapshot, running=self._engine.get_num_unfinished_requests())

    async def generate(
        self, request: pb.GenerateRequest, *, priority: int = DEFAULT_RANK
    ) -> AsyncIterator[pb.GenerateResponse]:
        model = self._require_model()
        prepared = await self._prepare(model, request)
        if request.continuation.choices:
            prepared = continue_prepared(model, prepared, request)
        # Request ids must be unique inside vLLM; a retried call may reuse the caller's id.
        vllm_id = f"{request.request_id or 'req'}-{uuid.uuid4().hex[:8]}"
        # W3C context for vLLM's own request span (when its tracing is configured).
        trace_headers = inject_headers() if tracing_enabled() else None
        trace.get_current_span().add_event("vllm.add_request")  # a no-op when not traced
        try:
            async for out in model.engine.generate(
                prepared.prompt,
                prepared.params,
                vllm_id,
                trace_headers=trace_headers,
                **self._scheduling(priority),
                **prepared.generate_kwargs,
            ):
                yield prepared.translator.translate(out)
                if prepared.translator.finished:
                    break  # leaving the loop aborts the request inside vLLM
        except VLLMClientError as exc:
            raise invalid_argument(str(exc), param=getattr(exc, "parameter", None)) from exc
        except EngineDeadError as exc:
            raise EngineError(grpc.StatusCode.INTERNAL, f"the engine died: {exc}") from exc

    def _scheduling(self, priority: int) -> dict[str, int]:
        """vLLM's `priority` (lower runs first, as class ranks do), under its priority
        policy only: fcfs ignores it in vLLM 0.32, and other releases refuse a non-zero
        one under fcfs."""
        return {"priority": priority} if self._config.vllm.scheduling_policy == "priority" else {}

    async def _prepare(self, model: LoadedModel, request: pb.GenerateRequest) -> Prepared:
        try:
            profile = self._profile(request.model)
            if request.WhichOneof("input") == "chat":
                return await prepare_chat(model, profile, request)
            return await prepare_completion(model, request)
        except (VLLMClientError, ValueError, TypeError, KeyError) as exc:
            raise invalid_argument(str(exc), param=getattr(exc, "parameter", None)) from exc

    def _require_model(self) -> LoadedModel:
        if self._model is None:
            raise EngineError(grpc.StatusCode.UNAVAILABLE, "the model is not loaded")
        return self._model

    def _profile(self, model: str) -> ChatProfile:
        profile = self._profiles.get(model or self._config.model_id)
        if profile is None:
            raise EngineError(
                grpc.StatusCode.NOT_FOUND, f"The model '{clip(model)}' does not exist"
            )
        return profile
