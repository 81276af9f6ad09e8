"""Observability at the edge: one observer per generation feeds the span, the metrics
and the access log from the same stream, so the three always agree."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common import telemetry as t
from services.common.gc_heap import expose_gc_metrics
from services.common.wire import FINISH_REASON_NAMES
from services.edge.forwarding import Forwarding
from services.proto_gen.tera.v1 import engine_pb2 as pb

access_log = logging.getLogger("tera.access")

REQUEST_LOG = "tera.log"  # request-scoped dict the access log prints

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class EdgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        expose_gc_metrics(r)
        self.requests = Counter(
            "tera_edge_requests",
            "HTTP requests by endpoint, model, status",
            ["endpoint", "model", "status"],
            registry=r,
        )
        self.in_flight = Gauge(
            "tera_edge_in_flight", "Requests being served", ["endpoint"], registry=r
        )
        self.ttft = Histogram(
            "tera_edge_time_to_first_token_seconds",
            "Time from request to first token",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "tera_edge_inter_token_latency_seconds",
            "Time between streamed tokens",
            ["model"],
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "tera_edge_tokens", "Tokens in and out", ["model", "kind"], registry=r
        )
        self.duration = Histogram(
            "tera_edge_request_duration_seconds",
            "Whole request duration",
            ["endpoint", "model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )


class GenerationObserver:
    def __init__(
        self,
        metrics: EdgeMetrics,
        http: web.Request,
        *,
        model: str,
        max_tokens: int | None,
        temperature: float | None,
        on_usage: Callable[[pb.Usage], None],
    ) -> None:
        self._metrics = metrics
        self._on_usage = on_usage  # billing: the stream's own count, once it ends
        self._model = model
        self._started = time.monotonic()
        self._last: float | None = None
        self._slowest_gap = 0.0
        self._usage = pb.Usage()  # the last one the stream sent
        self._finish: list[str] = []
        self._fields: dict[str, Any] = http.setdefault(REQUEST_LOG, {})
        self._fields["model"] = model
        self._span = trace.get_current_span()
        attributes = {t.GEN_AI_REQUEST_MODEL: model, t.GEN_AI_SYSTEM: "tera"}
        if max_tokens is not None:
            attributes[t.GEN_AI_REQUEST_MAX_TOKENS] = max_tokens
        if temperature is not None:
            attributes[t.GEN_AI_REQUEST_TEMPERATURE] = temperature
        self._span.set_attributes(attributes)
        # Per-message work stays small: labelled series and the exemplar are looked up once.
        self._ttft = metrics.ttft.labels(model)
        self._itl = metrics.itl.labels(model)
        self._exemplar = _exemplar()

    async def watch(
        self, stream: AsyncIterator[pb.GenerateResponse], forwarding: Forwarding | None = None
    ) -> AsyncIterator[pb.GenerateResponse]:
        """Observes each message of `stream`, and those `forwarding` takes around it."""
        if forwarding is not None:
            forwarding.tap(self._seen)
        try:
            async for message in stream:
                self._seen(message)
                yield message
        finally:
            self._on_end(self._usage, self._finish)

    def _seen(self, message: pb.GenerateResponse) -> None:
        tokens = 0
        for choice in message.choices:  # one pass a message: it runs per token
            tokens += choice.num_tokens
            if choice.finish_reason:
                self._finish.append(FINISH_REASON_NAMES.get(choice.finish_reason, "unknown"))
        self._on_message(tokens or 1)
        if message.HasField("usage"):
            self._usage = message.usage

    def _on_message(self, tokens: int) -> None:
        now = time.monotonic()
        if self._last is None:
            self._span.add_event("first_message")  # the first-token waterfall's edge mark
            ttft = now - self._started
            self._ttft.observe(ttft, self._exemplar)
            self._span.set_attribute(t.TTFT, ttft)
            self._fields["ttft_ms"] = round(ttft * 1000, 1)
        else:
            gap = (now - self._last) / tokens
            if gap > self._slowest_gap:
                # The exemplar goes with the stream's slowest gap so far, the one worth
                # opening its trace for; one on every token cost 1.5 us more per token.
                self._slowest_gap = gap
                self._itl.observe(gap, self._exemplar)
            else:
                self._itl.observe(gap)
        self._last = now

    def _on_end(self, usage: pb.Usage, finish: list[str]) -> None:
        self._on_usage(usage)
        self._metrics.tokens.labels(self._model, "prompt").inc(usage.prompt_tokens)
        self._metrics.tokens.labels(self._model, "completion").inc(usage.completion_tokens)
        self._span.set_attributes(
            {
                t.GEN_AI_USAGE_INPUT: usage.prompt_tokens,
                t.GEN_AI_USAGE_OUTPUT: usage.completion_tokens,
                t.GEN_AI_FINISH_REASONS: finish,
            }
        )
        # Several streams (completions with many prompts) add up.
        fields = self._fields
        fields["prompt_tokens"] = fields.get("prompt_tokens", 0) + usage.prompt_tokens
        fields["completion_tokens"] = fields.get("completion_tokens", 0) + usage.completion_tokens
        fields["finish_reasons"] = [*fields.get("finish_reasons", []), *finish]


def _exemplar() -> dict[str, str] | None:
    trace_id = t.current_trace_id()
    return {"trace_id": trace_id} if trace_id else None


def log_access(request: web.Request, status: int, seconds: float, endpoint: str) -> None:
    fields = request.get(REQUEST_LOG, {})
    record = {
        "request_id": request.get("request_id"),
        "trace_id": t.current_trace_id(),
        "method": request.method,
        "path": endpoint,
        "status": status,
        "duration_ms": round(seconds * 1000, 1),
        **fields,
    }
    access_log.info(json.dumps(record, separators=(",", ":")))
