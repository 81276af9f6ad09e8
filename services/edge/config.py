"""Edge settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator

from services.common.tls import TLSConfig, is_loopback, require_tls_off_loopback

__all__ = ["EdgeConfig", "is_loopback"]


class EdgeConfig(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    router: str = "127.0.0.1:50051"
    # How Generate streams reach the router: stream (the default), all of them over one
    # multiplexed link to the router's stream listener (its mux_stream_port,
    # services/common/mux_stream.py), which saves gRPC's cost a message, or over one
    # GenerateMux call where it offers none; mux, always over the GenerateMux call
    # (either costs edge and router a fraction of the CPU per message of per_call); per_call,
    # one gRPC call per stream.
    router_transport: Literal["per_call", "mux", "stream"] = "stream"
    # The operations listener: /metrics and /admin/* (never on the public port). None:
    # neither is served. Expose it to Prometheus and operators only.
    ops_host: str = "127.0.0.1"
    ops_port: int | None = None
    # Bearer keys accepted (besides the catalog's). None at all: no auth, and
    # loopback-only binding.
    api_keys: list[SecretStr] = Field(default_factory=list)
    # The model catalog and keys-as-tenants file (see deploy/catalog.example.yaml).
    catalog: Path | None = None
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_n: int = Field(16, ge=1)
    # Upper bound on max_tokens / max_completion_tokens (None: the model's context).
    max_tokens_limit: int | None = Field(None, ge=1)
    # Whole-request deadline, propagated through router to engine.
    request_timeout_s: float = Field(600.0, gt=0)
    # A stream with no message for this long since its last is ended with an error. The
    # wait for the first is not idle time: a long prefill or a deep queue may outlast it
    # (the router fails over a silent attempt when another replica can take it).
    stream_idle_timeout_s: float = Field(60.0, gt=0)
    # Window in which the engine batches tokens into one message; unset: the engine's own
    # default (the edge keeps none of its own).
    coalesce_window_ms: int | None = Field(None, ge=0, le=10)
    # Characters of the prompt hashed into the routing key when no session is given.
    affinity_prefix_chars: int = Field(256, ge=0)
    models_cache_s: float = Field(2.0, ge=0)
    # Per model id: the tokenizer (a Hugging Face name or folder; "words": the stand-in
    # engine's) with which the edge names prompt prefixes for the router's cache_aware
    # policy. Models not listed send no names.
    prefix_tokenizers: dict[str, str] = Field(default_factory=dict)
    # Stored responses (the Responses API's store=true): kept this long, in Redis when the
    # catalog names one, else in the SQLite file responses_db when set (`tera run` sets
    # one under its cache folder), else in memory; at most this many (SQLite, memory).
    responses_db: Path | None = None
    responses_ttl_s: float = Field(30 * 24 * 3600.0, gt=0)
    responses_max_stored: int = Field(10_000, ge=1)
    # Mutual TLS to the router (this edge's certificate, and the CA the router's is from).
    tls: TLSConfig | None = None

    @model_validator(mode="after")
    def _plaintext_on_loopback_only(self) -> EdgeConfig:
        require_tls_off_loopback(self.tls, [self.router], "to the router at")
        return self
