"""AsyncLLM's lifecycle: arguments from config, load, warm-up, shutdown, and the
scheduler figures vLLM reports each step (for GetLoad)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.renderers.inputs.preprocess import parse_model_prompt
from vllm.sampling_params import SamplingParams
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.metrics.loggers import StatLoggerBase

from services.common.telemetry import vllm_traces_endpoint
from services.engine.backends.base import BackendLoad
from services.engine.backends.vllm.kv_events import events_config
from services.engine.backends.vllm.resumed_logits import PROCESSOR as GRAMMAR_PROCESSOR
from services.engine.config import EngineConfig

WARMUP_PROMPT = "Hello"


def engine_args(config: EngineConfig, kv_events_endpoint: str | None = None) -> AsyncEngineArgs:
    opts = config.vllm
    optional = {
        "max_num_seqs": opts.max_num_seqs,
        "enable_prefix_caching": opts.enable_prefix_caching,
        "num_gpu_blocks_override": opts.num_gpu_blocks_override,
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
        scheduling_policy=opts.scheduling_policy,
        kv_events_config=events_config(kv_events_endpoint) if kv_events_endpoint else None,
        # Structured outputs and penalties across a resumed stream (resumed_logits.py).
        logits_processors=[GRAMMAR_PROCESSOR],
        # vLLM's request span under the engine's, when tracing is on.
        otlp_traces_endpoint=vllm_traces_endpoint(),
        **{k: v for k, v in optional.items() if v is not None},
    )


class SchedulerSnapshot:
    """Keeps the latest scheduler figures vLLM reports each step."""

    def __init__(self) -> None:
        self.load = BackendLoad()

    def factory(self, vllm_config: Any, engine_index: int = 0) -> StatLoggerBase:
        """vLLM's per-engine stat-logger factory signature."""
        return _SnapshotLogger(self)


class _SnapshotLogger(StatLoggerBase):
    def __init__(self, snapshot: SchedulerSnapshot) -> None:
        self._snapshot = snapshot

    def record(
        self,
        scheduler_stats: Any,
        iteration_stats: Any,
        mm_cache_stats: Any = None,
        engine_idx: int = 0,
    ) -> None:
        if scheduler_stats is not None:
            self._snapshot.load = BackendLoad(
                running=scheduler_stats.num_running_reqs,
                waiting=scheduler_stats.num_waiting_reqs,
                kv_cache_usage=scheduler_stats.kv_cache_usage,
            )

    def log_engine_initialized(self) -> None:
        pass


async def load_engine(
    config: EngineConfig, snapshot: SchedulerSnapshot, kv_events_endpoint: str | None = None
) -> AsyncLLM:
    # Loading takes tens of seconds: off the event loop, so health checks and signals
    # are answered meanwhile.
    args = engine_args(config, kv_events_endpoint)
    return await asyncio.to_thread(AsyncLLM.from_engine_args, args, stat_loggers=[snapshot.factory])


async def warm_up(engine: AsyncLLM) -> None:
    """One short generation, so the first real request pays no compilation."""
    (prompt,) = await engine.renderer.render_cmpl_async(
        [parse_model_prompt(engine.model_config, WARMUP_PROMPT)]
    )
    params = SamplingParams(max_tokens=4, temperature=0)
    async for _ in engine.generate(prompt, params, f"warmup-{uuid.uuid4().hex}"):
        pass


async def shut_down(engine: AsyncLLM) -> None:
    # Stop reading outputs first, or the reader reports the engine it is shutting down
    # as dead.
    if engine.output_handler is not None:
        engine.output_handler.cancel()
    await asyncio.to_thread(engine.shutdown)
