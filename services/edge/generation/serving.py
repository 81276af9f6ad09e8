"""One flow for chat and completions: admission -> proto -> upstream streams -> render.

An endpoint subclasses `GenerationServing` and supplies its request conversion
(`measure`, `upstreams`) and a `Renderer` for its JSON shapes; everything else, from
limits to the SSE failure chunk, happens here once.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import ClassVar, Generic, TypeVar

from aiohttp import web
from opentelemetry import trace

from services.edge.config import EdgeConfig
from services.edge.engine_client import EngineClient
from services.edge.errors import OpenAIError
from services.edge.forwarding import Forwarding
from services.edge.generation.admission import Admitted, admit
from services.edge.generation.merge import merge_streams
from services.edge.generation.protocol import SamplingRequest
from services.edge.generation.render import Renderer, add_usage, truncated, usage_json
from services.edge.observe import EdgeMetrics, GenerationObserver
from services.edge.sse import DONE, ChunkFramer, ImmediateWriter, dumps, frame, open_stream
from services.edge.tenancy.gate import Account, Gate, tenant_of
from services.proto_gen.tera.v1 import engine_pb2 as pb

SESSION_HEADER = "X-Session-Id"

B = TypeVar("B", bound=SamplingRequest)
Messages = AsyncIterator[tuple[int, pb.GenerateResponse]]  # (upstream index, message)


@dataclass
class RequestContext:
    http: web.Request
    request_id: str
    created: int = field(default_factory=lambda: int(time.time()))
    # Added to the response (rate-limit headers).
    headers: dict[str, str] = field(default_factory=dict)
    # A single upstream's way to the SSE writer around the task (forwarding.py).
    forwarding: Forwarding | None = None

    def response_headers(self) -> dict[str, str]:
        return {**self.headers, "X-Request-Id": self.request_id}

    @classmethod
    def from_http(cls, http: web.Request) -> RequestContext:
        return cls(http=http, request_id=http.get("request_id") or uuid.uuid4().hex)


@dataclass(frozen=True)
class Upstream:
    """One generation sent to the router (completions send one per prompt)."""

    request: pb.GenerateRequest
    routing_text: str  # hashed into the routing key when no session or user is given


@dataclass
class _Reply:
    """What the template renders a request's messages with."""

    ctx: RequestContext
    admitted: Admitted
    renderer: Renderer
    n: int  # samples per prompt: choice index = upstream index * n + sample index
    choices: int
    include_usage: bool


class GenerationServing(ABC, Generic[B]):
    # Whether `respond` streams through `_stream`, the SSE loop that can take a single
    # upstream's messages on the router link's reader (forwarding.py). An endpoint that
    # writes its own stream (Responses' typed events) leaves this False.
    forwards_streams: ClassVar[bool] = True

    def __init__(
        self, config: EdgeConfig, client: EngineClient, metrics: EdgeMetrics, gate: Gate
    ) -> None:
        self.config = config
        self.client = client
        self.metrics = metrics
        self.gate = gate

    @abstractmethod
    def measure(self, ctx: RequestContext, body: B) -> tuple[int, int]:
        """(prompt characters, number of prompts), for the admission's estimate."""

    @abstractmethod
    def upstreams(self, ctx: RequestContext, body: B, admitted: Admitted) -> list[Upstream]: ...

    def renderer(self, body: B) -> Renderer:
        """The endpoint's JSON shapes, for the default `respond`."""
        raise NotImplementedError(f"{type(self).__name__} must supply renderer or respond")

    async def respond(
        self,
        ctx: RequestContext,
        body: B,
        admitted: Admitted,
        first: tuple[int, pb.GenerateResponse] | None,
        messages: Messages,
    ) -> web.StreamResponse:
        """Turns the upstream messages into the HTTP answer: chat-style choices by default;
        an endpoint with another shape (Responses' typed events) overrides this."""
        n = body.n or 1
        _, prompts = self.measure(ctx, body)
        reply = _Reply(ctx, admitted, self.renderer(body), n, n * prompts, body.include_usage)
        if body.stream:
            return await _stream(reply, first, messages)
        return await _complete(reply, first, messages)

    async def create(self, ctx: RequestContext, body: B) -> web.StreamResponse:
        resolved = self.gate.resolve(ctx.http, body.model)
        async with self.gate.account(ctx.http, ctx.headers, resolved) as account:
            chars, prompts = self.measure(ctx, body)
            n = body.n or 1
            admitted = admit(self.config, resolved, body, prompt_chars=chars, choices=n * prompts)
            await account.reserve(admitted.estimated_tokens)
            upstreams = self.upstreams(ctx, body, admitted)
            fair = account.tenant.fair_metadata(admitted.estimated_tokens // max(1, len(upstreams)))
            if self.forwards_streams and body.stream and len(upstreams) == 1:  # else: merge
                ctx.forwarding = Forwarding()
            streams = [self._generate(ctx, u, account, body.user, fair) for u in upstreams]
            merged = merge_streams(streams)  # type: ignore[arg-type]
            try:
                # Waits for the first message, so errors before it get a proper HTTP status.
                first = await anext(merged, None)
                return await self.respond(ctx, body, admitted, first, merged)  # type: ignore[arg-type]
            finally:
                await merged.aclose()  # type: ignore[attr-defined]

    def _generate(
        self,
        ctx: RequestContext,
        upstream: Upstream,
        account: Account,
        user: str | None,
        fair: list[tuple[str, str]],
    ) -> AsyncIterator[pb.GenerateResponse]:
        request = upstream.request
        if self.config.coalesce_window_ms:  # unset: the engine's default applies
            request.coalesce_window_ms = self.config.coalesce_window_ms
        s = request.sampling
        observer = GenerationObserver(
            self.metrics,
            ctx.http,
            model=request.model,
            max_tokens=s.max_tokens if s.HasField("max_tokens") else None,
            temperature=s.temperature if s.HasField("temperature") else None,
            on_usage=account.add_usage,
        )
        return observer.watch(
            self.client.generate(
                request,
                routing_key=self.routing_key(ctx.http, user, upstream.routing_text),
                tenant=tenant_of(ctx.http).name,
                timeout_s=self.config.request_timeout_s,
                idle_timeout_s=self.config.stream_idle_timeout_s,
                fair=fair,
                forwarding=ctx.forwarding,
            ),
            ctx.forwarding,
        )

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


def _envelope(reply: _Reply, object_: str) -> dict[str, object]:
    return {
        "id": f"{reply.renderer.id_prefix}-{reply.ctx.request_id}",
        "object": object_,
        "created": reply.ctx.created,
        "model": reply.admitted.reported,
    }


def _total(usages: dict[int, pb.Usage]) -> pb.Usage:
    """Each upstream's last usage message, added up over upstreams."""
    total = pb.Usage()
    for usage in usages.values():
        add_usage(total, usage)
    return total


async def _complete(
    reply: _Reply, first: tuple[int, pb.GenerateResponse] | None, messages: Messages
) -> web.Response:
    renderer = reply.renderer
    choices = {i: renderer.choice() for i in range(reply.choices)}
    usages: dict[int, pb.Usage] = {}
    item = first
    while item is not None:
        upstream, message = item
        for delta in message.choices:
            index = upstream * reply.n + delta.index
            choices.setdefault(index, renderer.choice()).add(delta)
        if message.HasField("usage"):
            usages[upstream] = message.usage
        item = await anext(messages, None)
    if any(not c.finish_reason for c in choices.values()):
        raise truncated()
    payload = {
        **_envelope(reply, renderer.object),
        "choices": [c.json(i, renderer.logprobs) for i, c in sorted(choices.items())],
        "usage": usage_json(_total(usages)),
    }
    return web.json_response(payload, dumps=dumps, headers=reply.ctx.response_headers())


async def _stream(
    reply: _Reply, first: tuple[int, pb.GenerateResponse] | None, messages: Messages
) -> web.StreamResponse:
    renderer = reply.renderer
    response, writer = await open_stream(reply.ctx.http, reply.ctx.response_headers())
    framer = ChunkFramer(_envelope(reply, renderer.chunk_object), include_usage=reply.include_usage)
    chunks = _Chunks(reply, framer)
    opening = renderer.opening(reply.n)
    if opening:
        await response.write(b"".join(framer.choices(dumps(c)) for c in opening))
    try:
        item = first
        while item is not None:
            upstream, message = item
            data, finished = chunks.render(upstream, message)
            await response.write(data)
            chunks.sent(upstream, message, finished)
            if item is first:  # the first-token waterfall's last server-side mark
                trace.get_current_span().add_event("first_chunk_written")
                if reply.ctx.forwarding is not None:  # headers are out: writes may skip us
                    reply.ctx.forwarding.sink = chunks.sink(ImmediateWriter(response, writer))
            item = await anext(messages, None)
        if chunks.unfinished:
            raise truncated()
    except OpenAIError as exc:
        failed = (framer.choices(dumps(renderer.failed(i))) for i in sorted(chunks.unfinished))
        await response.write(b"".join(failed) + frame(exc.body()))
        return response
    finally:
        if reply.ctx.forwarding is not None:
            reply.ctx.forwarding.sink = None
    if reply.include_usage and (chunks.usages or not renderer.usage_needs_upstream):
        await response.write(framer.usage(usage_json(_total(chunks.usages))))
    await response.write(DONE)
    return response


class _Chunks:
    """A streamed reply's SSE chunks and what they have told the client so far; used by
    the stream's task and, for forwarded messages, on the router link's reader."""

    def __init__(self, reply: _Reply, framer: ChunkFramer) -> None:
        self._renderer = reply.renderer
        self._n = reply.n
        self._framer = framer
        self.unfinished = set(range(reply.choices))
        self.usages: dict[int, pb.Usage] = {}

    def render(self, upstream: int, message: pb.GenerateResponse) -> tuple[bytes, list[int]]:
        """The message's SSE chunks, and the choices it finishes (for `sent`). One pass
        over the choices: reading a message's repeated field costs as much as rendering
        the chunk, and this runs per token."""
        delta_json, choices = self._renderer.delta_json, self._framer.choices
        base = upstream * self._n
        parts: list[bytes] = []
        finished: list[int] = []
        for d in message.choices:
            index = base + d.index
            parts.append(choices(delta_json(index, d)))
            if d.finish_reason:
                finished.append(index)
        return (parts[0] if len(parts) == 1 else b"".join(parts)), finished

    def sent(self, upstream: int, message: pb.GenerateResponse, finished: list[int]) -> None:
        """What `render` gave reached the client."""
        for index in finished:
            self.unfinished.discard(index)
        if message.HasField("usage"):
            self.usages[upstream] = message.usage

    def sink(self, writer: ImmediateWriter) -> Callable[[pb.GenerateResponse], bool]:
        """Renders and writes a single upstream's message now, if the client's socket
        takes it without waiting."""

        def take(message: pb.GenerateResponse) -> bool:
            data, finished = self.render(0, message)
            if not writer.write_now(data):
                return False
            self.sent(0, message, finished)
            return True

        return take
