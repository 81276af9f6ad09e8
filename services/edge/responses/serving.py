"""POST /v1/responses: one more endpoint of the generation template.

Admission, limits, routing and the upstream call are the template's; this adapter adds
the conversation (previous_response_id, from the store), renders the engine's deltas
as output items (whole, or as OpenAI's typed events with sequence numbers) and stores
the result when `store` is on.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from services.edge.config import EdgeConfig
from services.edge.engine_client import EngineClient
from services.edge.errors import OpenAIError
from services.edge.generation.admission import Admitted
from services.edge.generation.render import truncated
from services.edge.generation.serving import GenerationServing, Messages, RequestContext, Upstream
from services.edge.observe import EdgeMetrics
from services.edge.responses.items import Item, items_chars
from services.edge.responses.output import Event, OutputBuilder, usage_json
from services.edge.responses.protocol import ResponseRequest
from services.edge.responses.store import ResponseStore, StoredResponse
from services.edge.sse import dumps, open_stream
from services.edge.tenancy.gate import Gate, tenant_of
from services.proto_gen.tera.v1 import engine_pb2 as pb

First = tuple[int, pb.GenerateResponse] | None


def not_found(response_id: str, param: str | None = None) -> OpenAIError:
    return OpenAIError(
        404, f"Response with id '{response_id}' not found.", param=param, code="not_found"
    )


@dataclass
class ResponsesContext(RequestContext):
    input: list[Item] = field(default_factory=list)  # this request's items, stored shape
    context: list[Item] = field(default_factory=list)  # earlier turns' items


@dataclass
class _Run:
    """One response being generated: its object, its output and how it is sent."""

    ctx: ResponsesContext
    body: ResponseRequest
    response: dict[str, Any]
    builder: OutputBuilder


class ResponsesServing(GenerationServing[ResponseRequest]):
    forwards_streams = False  # its typed events are written by its own loop

    def __init__(
        self,
        config: EdgeConfig,
        client: EngineClient,
        metrics: EdgeMetrics,
        gate: Gate,
        *,
        store: ResponseStore,
    ) -> None:
        super().__init__(config, client, metrics, gate)
        self.store = store

    async def create(self, ctx: RequestContext, body: ResponseRequest) -> web.StreamResponse:
        context: list[Item] = []
        if body.previous_response_id:
            tenant = tenant_of(ctx.http).name
            previous = await self.store.get(tenant, body.previous_response_id)
            if previous is None:
                raise not_found(body.previous_response_id, "previous_response_id")
            context = previous.conversation()
        extended = ResponsesContext(
            http=ctx.http,
            request_id=ctx.request_id,
            created=ctx.created,
            headers=ctx.headers,
            input=body.input_items(),
            context=context,
        )
        return await super().create(extended, body)

    def measure(self, ctx: RequestContext, body: ResponseRequest) -> tuple[int, int]:
        # The earlier turns are sent to the engine too: the reservation counts them.
        assert isinstance(ctx, ResponsesContext)
        return body.prompt_chars() + items_chars(ctx.context), 1

    def upstreams(
        self, ctx: RequestContext, body: ResponseRequest, admitted: Admitted
    ) -> list[Upstream]:
        assert isinstance(ctx, ResponsesContext)
        conversation = [*ctx.context, *ctx.input]
        request = body.to_proto(ctx.request_id, admitted.model, admitted.max_tokens, conversation)
        first = request.chat.messages[0] if request.chat.messages else None
        return [Upstream(request, first.content if first is not None else "")]

    async def respond(
        self,
        ctx: RequestContext,
        body: ResponseRequest,
        admitted: Admitted,
        first: First,
        messages: Messages,
    ) -> web.StreamResponse:
        assert isinstance(ctx, ResponsesContext)
        builder = OutputBuilder(summary=body.summary is not None, logprobs=body.logprobs)
        run = _Run(ctx, body, _envelope(ctx, body, admitted), builder)
        if body.stream:
            return await self._stream(run, first, messages)
        await self._finish(run, await _drain(run, first, messages, None))
        return web.json_response(run.response, dumps=dumps, headers=ctx.response_headers())

    async def _stream(self, run: _Run, first: First, messages: Messages) -> web.StreamResponse:
        response, _ = await open_stream(run.ctx.http, run.ctx.response_headers())
        writer = _EventWriter(response)
        opening = dict(run.response)
        await writer.write(
            [
                {"type": "response.created", "response": opening},
                {"type": "response.in_progress", "response": opening},
            ]
        )
        try:
            events = await self._finish(run, await _drain(run, first, messages, writer))
        except OpenAIError as exc:
            events = run.builder.close("incomplete")
            run.response.update(
                status="failed",
                output=run.builder.items,
                error={"code": "server_error", "message": exc.message},
            )
            await writer.write([*events, {"type": "response.failed", "response": run.response}])
            return response
        final = f"response.{run.response['status']}"  # completed or incomplete
        await writer.write([*events, {"type": final, "response": run.response}])
        return response

    async def _finish(self, run: _Run, outcome: tuple[int, pb.Usage]) -> list[Event]:
        """Completes the response object (and stores it); returns the closing events."""
        finish, usage = outcome
        cut = finish == pb.FINISH_REASON_LENGTH
        events = run.builder.close("incomplete" if cut else "completed")
        run.response.update(
            status="incomplete" if cut else "completed",
            completed_at=None if cut else int(time.time()),
            incomplete_details={"reason": "max_output_tokens"} if cut else None,
            output=run.builder.items,
            usage=usage_json(usage),
        )
        if run.body.store is not False:
            record = StoredResponse(run.response, run.ctx.input, run.ctx.context)
            await self.store.put(tenant_of(run.ctx.http).name, record)
        return events


async def _drain(
    run: _Run, first: First, messages: Messages, writer: _EventWriter | None
) -> tuple[int, pb.Usage]:
    """Feeds every delta to the builder (streaming its events); (finish reason, usage)."""
    finish, usage = pb.FINISH_REASON_UNSPECIFIED, pb.Usage()
    item = first
    while item is not None:
        _, message = item
        events: list[Event] = []
        for delta in message.choices:
            events += run.builder.add(delta)
            finish = delta.finish_reason or finish
        if writer is not None:
            await writer.write(events)
        if message.HasField("usage"):
            usage = message.usage
        item = await anext(messages, None)
    if not finish:
        raise truncated()
    return finish, usage


class _EventWriter:
    """Frames typed events (`event:` line and JSON data) and numbers them in order."""

    def __init__(self, response: web.StreamResponse) -> None:
        self._response = response
        self._sequence = itertools.count()

    async def write(self, events: list[Event]) -> None:
        if not events:
            return
        frames = []
        for event in events:
            data = dumps({**event, "sequence_number": next(self._sequence)})
            frames.append(f"event: {event['type']}\ndata: {data}\n\n".encode())
        await self._response.write(b"".join(frames))


def _envelope(ctx: RequestContext, body: ResponseRequest, admitted: Admitted) -> dict[str, Any]:
    return {
        "id": f"resp_{ctx.request_id}",
        "object": "response",
        "created_at": ctx.created,
        "status": "in_progress",
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "model": admitted.reported,
        "output": [],  # usage (not nullable) comes with the end
        **body.echo(),
    }
