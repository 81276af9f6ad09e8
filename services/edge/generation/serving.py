"""What chat and completions serving share: limits, routing keys, streams, usage."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from services.edge.config import EdgeConfig
from services.edge.engine_client import EngineClient
from services.edge.errors import bad_request, model_not_found
from services.edge.observe import EdgeMetrics, GenerationObserver
from services.edge.tenancy.gate import Gate
from services.proto_gen.tera.v1 import engine_pb2 as pb

SESSION_HEADER = "X-Session-Id"

FINISH_REASONS = {
    pb.FINISH_REASON_UNSPECIFIED: None,
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_TOOL_CALLS: "tool_calls",
    pb.FINISH_REASON_CONTENT_FILTER: "content_filter",
    pb.FINISH_REASON_ABORT: "abort",
}
# finish_reason of a choice whose stream broke: anything but "stop", so that no client
# mistakes a truncated answer for a complete one.
FAILED = "error"


@dataclass
class RequestContext:
    http: web.Request
    request_id: str
    created: int = field(default_factory=lambda: int(time.time()))
    # Added to the response (rate-limit headers).
    headers: dict[str, str] = field(default_factory=dict)

    def response_headers(self) -> dict[str, str]:
        return {**self.headers, "X-Request-Id": self.request_id}

    @classmethod
    def from_http(cls, http: web.Request) -> RequestContext:
        return cls(http=http, request_id=http.get("request_id") or uuid.uuid4().hex)


class GenerationServing:
    def __init__(
        self, config: EdgeConfig, client: EngineClient, metrics: EdgeMetrics, gate: Gate
    ) -> None:
        self.config = config
        self.client = client
        self.metrics = metrics
        self.gate = gate

    def check_limits(self, n: int | None, max_tokens: int | None) -> None:
        if n is not None and n > self.config.max_n:
            raise bad_request(f"n must be at most {self.config.max_n}", param="n")
        limit = self.config.max_tokens_limit
        if limit is not None and max_tokens is not None and max_tokens > limit:
            raise bad_request(f"max_tokens must be at most {limit}", param="max_tokens")

    def routing_key(self, http: web.Request, user: str | None, prompt_text: str) -> str | None:
        """Session header, then `user`, then the prompt's first characters; hashed, so any
        text is a valid gRPC metadata value and no user data crosses in clear."""
        source = http.headers.get(SESSION_HEADER) or user
        if not source:
            k = self.config.affinity_prefix_chars
            if not k or not prompt_text:
                return None
            source = prompt_text[:k]
        return hashlib.blake2b(source.encode(errors="replace"), digest_size=8).hexdigest()

    def stream(
        self, ctx: RequestContext, request: pb.GenerateRequest, routing_key: str | None
    ) -> AsyncIterator[pb.GenerateResponse]:
        if not servable_name(request.model):
            # Model ids are printable ASCII (as Hugging Face's are, and as gRPC metadata
            # needs): any other name names no model.
            raise model_not_found(request.model)
        if self.config.coalesce_window_ms and not request.coalesce_window_ms:
            request.coalesce_window_ms = self.config.coalesce_window_ms
        s = request.sampling
        observer = GenerationObserver(
            self.metrics,
            ctx.http,
            model=request.model,
            max_tokens=s.max_tokens if s.HasField("max_tokens") else None,
            temperature=s.temperature if s.HasField("temperature") else None,
        )
        return observer.watch(
            self.client.generate(
                request,
                routing_key=routing_key,
                timeout_s=self.config.request_timeout_s,
                idle_timeout_s=self.config.stream_idle_timeout_s,
            )
        )


def servable_name(model: str) -> bool:
    return model.isascii() and model.isprintable()


async def first_message(
    stream: AsyncIterator[pb.GenerateResponse],
) -> pb.GenerateResponse | None:
    """Waits for the first message, so errors before it get a proper HTTP status."""
    return await anext(stream, None)


def usage_json(usage: pb.Usage) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }
    if usage.reasoning_tokens:
        body["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return body


def add_usage(total: pb.Usage, part: pb.Usage) -> None:
    total.prompt_tokens += part.prompt_tokens
    total.completion_tokens += part.completion_tokens
    total.cached_tokens += part.cached_tokens
    total.reasoning_tokens += part.reasoning_tokens
