"""The engine's part of a request's trace: GenAI attributes and its phases as events
(admitted, first token, finished) on the RPC's server span."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from opentelemetry import trace

from services.common import telemetry as t
from services.common.priority import PRIORITIES
from services.common.wire import FINISH_REASON_NAMES
from services.proto_gen.tera.v1 import engine_pb2 as pb


async def observe_generation(
    request: pb.GenerateRequest,
    stream: AsyncIterator[pb.GenerateResponse],
    *,
    system: str,
    priority: int,
) -> AsyncIterator[pb.GenerateResponse]:
    span = trace.get_current_span()
    if not span.is_recording():  # tracing off: no per-message work at all
        async for message in stream:
            yield message
        return
    s = request.sampling
    span.set_attributes(
        {
            t.GEN_AI_SYSTEM: system,
            t.GEN_AI_OPERATION: "chat"
            if request.WhichOneof("input") == "chat"
            else "text_completion",
            t.GEN_AI_REQUEST_MODEL: request.model,
            t.PRIORITY: PRIORITIES[priority],  # the class the backend scheduled it by
            **({t.GEN_AI_REQUEST_MAX_TOKENS: s.max_tokens} if s.HasField("max_tokens") else {}),
            **({t.GEN_AI_REQUEST_TEMPERATURE: s.temperature} if s.HasField("temperature") else {}),
        }
    )
    started = time.monotonic()
    span.add_event("admitted")
    first = True
    finish: list[str] = []
    async for message in stream:
        if first:
            span.add_event("first_token")
            span.set_attribute(t.TTFT, time.monotonic() - started)
            first = False
        finish += [
            FINISH_REASON_NAMES.get(c.finish_reason) or ""
            for c in message.choices
            if c.finish_reason
        ]
        if message.HasField("usage"):
            span.set_attributes(
                {
                    t.GEN_AI_USAGE_INPUT: message.usage.prompt_tokens,
                    t.GEN_AI_USAGE_OUTPUT: message.usage.completion_tokens,
                    t.GEN_AI_FINISH_REASONS: finish,
                }
            )
        if message.HasField("timings"):
            span.set_attribute(t.QUEUE_TIME, message.timings.queue_seconds)
        yield message
    span.add_event("finished")
