"""Hosts a model in vLLM's AsyncLLM (CPU build here, CUDA build on GPUs)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMClientError
from vllm.renderers.inputs.preprocess import parse_model_prompt
from vllm.renderers.params import TokenizeParams
from vllm.sampling_params import RequestOutputKind, SamplingParams
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError
from vllm.v1.metrics.loggers import StatLoggerBase

from services.common.telemetry import inject_headers, tracing_enabled
from services.engine.backends.base import Backend, BackendLoad
from services.engine.backends.vllm_inputs import chat_request, check_context, completion_request
from services.engine.backends.vllm_outputs import OutputTranslator
from services.engine.backends.vllm_parsing import (
    ChatProfile,
    ChoiceParser,
    build_profile,
    needs_parsing,
)
from services.engine.config import EngineConfig
from services.engine.errors import EngineError, invalid_argument
from services.proto_gen.tera.v1 import engine_pb2 as pb

log = logging.getLogger("tera.engine.vllm")

WARMUP_PROMPT = "Hello"


@dataclasses.dataclass
class _Prepared:
    """A request ready for AsyncLLM.generate, and how to translate its outputs."""

    prompt: Any
    params: SamplingParams
    translator: OutputTranslator
    generate_kwargs: dict[str, Any]


class _SchedulerSnapshot:
    """Keeps the latest scheduler figures vLLM reports each step (for GetLoad)."""

    def __init__(self) -> None:
        self.load = BackendLoad()

    def factory(self, vllm_config: Any, engine_index: int = 0) -> StatLoggerBase:
        snapshot = self

        class _Logger(StatLoggerBase):
            def __init__(self, *_: Any) -> None:
                pass

            def record(
                self,
                scheduler_stats: Any,
                iteration_stats: Any,
                mm_cache_stats: Any = None,
                engine_idx: int = 0,
            ) -> None:
                if scheduler_stats is not None:
                    snapshot.load = BackendLoad(
                        running=scheduler_stats.num_running_reqs,
                        waiting=scheduler_stats.num_waiting_reqs,
                        kv_cache_usage=scheduler_stats.kv_cache_usage,
                    )

            def log_engine_initialized(self) -> None:
                pass

        return _Logger(vllm_config, engine_index)


def engine_args(config: EngineConfig) -> AsyncEngineArgs:
    opts = config.vllm
    optional = {
        "max_num_seqs": opts.max_num_seqs,
        "enable_prefix_caching": opts.enable_prefix_caching,
        "quantization": opts.quantization,
        # Lets structured outputs (e.g. forced tool calls) start after the reasoning.
        "reasoning_parser": config.reasoning_parser,
    }
    return AsyncEngineArgs(
        model=str(config.model_dir),
        served_model_name=[config.model_id],
        dtype=opts.dtype,
        max_model_len=opts.max_model_len,
        enforce_eager=opts.enforce_eager,
        gpu_memory_utilization=opts.gpu_memory_utilization,
        tensor_parallel_size=opts.tensor_parallel_size,
        pipeline_parallel_size=opts.pipeline_parallel_size,
        **{k: v for k, v in optional.items() if v is not None},
    )


class VllmBackend(Backend):
    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._engine: AsyncLLM | None = None
        self._scheduler = _SchedulerSnapshot()
        self._defaults: dict[str, Any] = {}
        self._max_model_len = config.max_context_length
        self._profiles: dict[str, ChatProfile] = {}
        self._created = int(time.time())

    async def start(self) -> None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self._config.vllm.cpu_kv_cache_gib))
        started = time.monotonic()
        # Loading takes tens of seconds: off the event loop, so health checks and
        # signals are answered meanwhile.
        self._engine = await asyncio.to_thread(
            AsyncLLM.from_engine_args,
            engine_args(self._config),
            stat_loggers=[self._scheduler.factory],
        )
        self._max_model_len = self._engine.model_config.max_model_len
        self._defaults = self._engine.model_config.get_diff_sampling_param()
        self._profiles = self._build_profiles(self._engine)
        await self._warm_up()
        log.info(
            "vLLM ready in %.1f s (max_model_len=%d, models=%s)",
            time.monotonic() - started,
            self._max_model_len,
            list(self._profiles),
        )

    def _build_profiles(self, engine: AsyncLLM) -> dict[str, ChatProfile]:
        config = self._config
        entries = [
            (
                config.model_id,
                config.tool_call_parser,
                config.reasoning_parser,
                config.chat_template,
            )
        ]
        entries += [
            (v.model_id, v.tool_call_parser, v.reasoning_parser, v.chat_template)
            for v in config.variants
        ]
        tokenizer = engine.renderer.get_tokenizer()
        return {
            model_id: build_profile(
                model_id,
                tokenizer=tokenizer,
                model_config=engine.model_config,
                tool_call_parser=tool,
                reasoning_parser=reasoning,
                chat_template=template.read_text() if template else None,
            )
            for model_id, tool, reasoning, template in entries
        }

    async def _warm_up(self) -> None:
        """One short generation, so the first real request pays no compilation."""
        engine = self._require_engine()
        (prompt,) = await engine.renderer.render_cmpl_async(
            [parse_model_prompt(engine.model_config, WARMUP_PROMPT)]
        )
        params = SamplingParams(max_tokens=4, temperature=0)
        async for _ in engine.generate(prompt, params, f"warmup-{uuid.uuid4().hex}"):
            pass

    async def stop(self) -> None:
        if self._engine is not None:
            # Stop reading outputs first, or the reader reports the engine it is
            # shutting down as dead.
            if self._engine.output_handler is not None:
                self._engine.output_handler.cancel()
            await asyncio.to_thread(self._engine.shutdown)
            self._engine = None

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

    def _require_engine(self) -> AsyncLLM:
        if self._engine is None:
            raise EngineError(grpc.StatusCode.UNAVAILABLE, "the model is not loaded")
        return self._engine

    def _profile(self, model: str) -> ChatProfile:
        profile = self._profiles.get(model or self._config.model_id)
        if profile is None:
            raise EngineError(grpc.StatusCode.NOT_FOUND, f"The model '{model}' does not exist")
        return profile

    async def generate(self, request: pb.GenerateRequest) -> AsyncIterator[pb.GenerateResponse]:
        engine = self._require_engine()
        try:
            if request.WhichOneof("input") == "chat":
                prepared = await self._prepare_chat(engine, request)
            else:
                prepared = await self._prepare_completion(engine, request)
        except (VLLMClientError, ValueError, TypeError, KeyError) as exc:
            raise invalid_argument(str(exc), param=getattr(exc, "parameter", None)) from exc
        # Request ids must be unique inside vLLM; a retried call may reuse the caller's id.
        vllm_id = f"{request.request_id or 'req'}-{uuid.uuid4().hex[:8]}"
        # W3C context for vLLM's own request span (when its tracing is configured).
        trace_headers = inject_headers() if tracing_enabled() else None
        try:
            async for out in engine.generate(
                prepared.prompt,
                prepared.params,
                vllm_id,
                trace_headers=trace_headers,
                **prepared.generate_kwargs,
            ):
                yield prepared.translator.translate(out)
        except VLLMClientError as exc:
            raise invalid_argument(str(exc), param=getattr(exc, "parameter", None)) from exc
        except EngineDeadError as exc:
            raise EngineError(grpc.StatusCode.INTERNAL, f"the engine died: {exc}") from exc

    async def _prepare_chat(self, engine: AsyncLLM, request: pb.GenerateRequest) -> _Prepared:
        profile = self._profile(request.model)
        req = chat_request(request)
        tools = [t.model_dump() for t in req.tools] if req.tools else None
        chat_params = req.build_chat_params(profile.chat_template, "auto").with_defaults(
            {"tools": tools, "tokenize": False}
        )
        _, (prompt,) = await engine.renderer.render_chat_async(
            [list(req.messages)], chat_params, self._tok_params(engine, chat=True)
        )
        prompt_ids = prompt["prompt_token_ids"]
        max_tokens = self._max_tokens(request, len(prompt_ids), "messages")
        template_kwargs = chat_params.chat_template_kwargs
        tokenizer = engine.renderer.get_tokenizer()

        def new_parser() -> Any:
            return profile.parser_cls(
                tokenizer,
                req.tools,
                chat_template_kwargs=template_kwargs,
                model_config=engine.model_config,
            )

        parsing = needs_parsing(profile, req)
        if parsing:
            # Sets the constraint that forces required/named tool calls.
            req = new_parser().adjust_request(req)
        params = req.to_sampling_params(max_tokens, self._defaults)
        params.output_kind = RequestOutputKind.DELTA
        generate_kwargs: dict[str, Any] = {}
        if parsing and profile.has_reasoning_parser:
            probe = new_parser()
            generate_kwargs = {
                "reasoning_ended": req.resolve_reasoning_ended(probe, prompt_ids),
                "reasoning_parser_kwargs": {"chat_template_kwargs": template_kwargs},
            }
        factory = (lambda: ChoiceParser(new_parser(), req, prompt_ids)) if parsing else None
        translator = OutputTranslator(
            top_logprobs=request.output.top_logprobs if request.output.logprobs else None,
            parser_factory=factory,
        )
        return _Prepared(prompt, params, translator, generate_kwargs)

    async def _prepare_completion(self, engine: AsyncLLM, request: pb.GenerateRequest) -> _Prepared:
        self._profile(request.model)
        req = completion_request(request)
        p = request.prompt
        if p.WhichOneof("prompt") == "token_ids":
            ids = list(p.token_ids.ids)
            vocab = engine.model_config.get_vocab_size()
            if any(i >= vocab for i in ids):
                raise invalid_argument(
                    f"token ids must be below the vocabulary size {vocab}", param="prompt"
                )
            text = engine.get_tokenizer().decode(ids)
            raw: Any = {"prompt_token_ids": ids}
        else:
            text = p.text
            raw = parse_model_prompt(engine.model_config, text)
        (prompt,) = await engine.renderer.render_cmpl_async(
            [raw], self._tok_params(engine, chat=False)
        )
        max_tokens = self._max_tokens(request, len(prompt["prompt_token_ids"]), "prompt")
        params = req.to_sampling_params(max_tokens, self._defaults)
        params.output_kind = RequestOutputKind.DELTA
        translator = OutputTranslator(
            top_logprobs=request.output.top_logprobs if request.output.logprobs else None,
            echo_text=text if request.output.echo else None,
        )
        return _Prepared(prompt, params, translator, {})

    def _max_tokens(self, request: pb.GenerateRequest, prompt_len: int, prompt_param: str) -> int:
        s = request.sampling
        requested = s.max_tokens if s.HasField("max_tokens") else None
        return check_context(prompt_len, requested, self._max_model_len, prompt_param=prompt_param)

    @staticmethod
    def _tok_params(engine: AsyncLLM, *, chat: bool) -> TokenizeParams:
        """vLLM's defaults minus its length check: check_context words that error itself."""
        renderer = engine.renderer
        base = renderer.default_chat_tok_params if chat else renderer.default_cmpl_tok_params
        return dataclasses.replace(base, max_total_tokens=None)
