"""The edge's gRPC client to the router (or straight to an engine: same contract)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from services.common import metadata, prefix_hash
from services.common.grpc_options import CHANNEL_OPTIONS
from services.common.mux import GENERATE
from services.common.mux_client import MuxCall, MuxChannel, StreamTransport
from services.common.telemetry import grpc_client_interceptors
from services.common.tls import RotatingChannel, TLSConfig
from services.edge.errors import OpenAIError, from_grpc
from services.edge.forwarding import Forwarding
from services.edge.prefix import PrefixNamer
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc


class StreamIdle(Exception):
    """The upstream sent nothing for longer than the idle timeout."""


class EngineClient:
    def __init__(
        self,
        target: str,
        *,
        models_cache_s: float = 2.0,
        known_models: frozenset[str] = frozenset(),
        prefix_namer: PrefixNamer | None = None,
        tls: TLSConfig | None = None,
        grace_s: float = 600.0,
        transport: str,
    ) -> None:
        self._prefix_namer = prefix_namer
        # A renewed certificate is picked up by new calls; streams on the old channel
        # get grace_s (the request timeout) to finish.
        self._channel = RotatingChannel(
            target,
            tls,
            options=CHANNEL_OPTIONS,
            interceptors=grpc_client_interceptors(),
            grace_s=grace_s,
        )
        # EdgeConfig.router_transport: Generate streams as calls of their own, or over one
        # multiplexed call or stream link (its MuxCalls behave as plain calls to _relay).
        self._mux = None
        if transport != "per_call":
            stream = StreamTransport(tls) if transport == "stream" else None
            self._mux = MuxChannel(self._channel.current, target, stream)
        self._mux_generate = self._mux and self._mux.unary_stream(
            GENERATE, pb.GenerateResponse.FromString
        )
        self._models_cache_s = models_cache_s
        self._models: list[pb.ModelInfo] = []
        self._models_at = float("-inf")
        # Models that exist whatever the router says (the catalog's): a 404 for one of
        # them means no replica has been seen yet, and reads as 503.
        self._known_models = known_models

    @property
    def _stub(self) -> pb_grpc.EngineStub:
        return pb_grpc.EngineStub(self._channel.current())

    def _start(
        self, request: pb.GenerateRequest, md: list, timeout_s: float
    ) -> grpc.aio.UnaryStreamCall | MuxCall:
        if self._mux_generate is None:
            return self._stub.Generate(request, metadata=md, timeout=timeout_s)
        data = request.SerializeToString()
        md = [*md, (metadata.KEEPALIVE, "1")]  # _relay's idle clock hears them
        return self._mux_generate(data, metadata=tuple(md), timeout=timeout_s)

    async def close(self) -> None:
        if self._mux is not None:
            self._mux.close()
        await self._channel.close()

    async def list_models(self) -> list[pb.ModelInfo]:
        if time.monotonic() - self._models_at > self._models_cache_s:
            try:
                response = await self._stub.ListModels(pb.ListModelsRequest(), timeout=5)
            except grpc.aio.AioRpcError as exc:
                raise from_grpc(exc) from exc
            self._models = list(response.models)
            self._models_at = time.monotonic()
        return self._models

    def generate(
        self,
        request: pb.GenerateRequest,
        *,
        routing_key: str | None,
        tenant: str | None = None,
        timeout_s: float,
        idle_timeout_s: float,
        fair: list[tuple[str, str]] | None = None,
        forwarding: Forwarding | None = None,
    ) -> AsyncIterator[pb.GenerateResponse]:
        """Yields the stream's messages; failures arrive as OpenAIError. `fair`: the
        tenant metadata the router's fair queue reads. `forwarding`: takes messages as
        they arrive, when the router link is multiplexed (forwarding.py); the rest are
        yielded.

        Closing the iterator early (client gone) cancels the call, and with it the
        request on the engine that holds it.
        """
        md: list[tuple[str, Any]] = _metadata(request.model, routing_key, tenant)
        md += [kv for kv in fair or () if kv[0] != metadata.TENANT]  # tenant sent once
        if self._prefix_namer is not None and self._prefix_namer.covers(request.model):
            return self._named(request, md, timeout_s, idle_timeout_s, forwarding)
        call = self._start(request, md, timeout_s)
        known = request.model in self._known_models
        return _relay(call, idle_timeout_s, known_model=known, forwarding=forwarding)

    async def _named(
        self,
        request: pb.GenerateRequest,
        md: list,
        timeout_s: float,
        idle_timeout_s: float,
        forwarding: Forwarding | None,
    ) -> AsyncIterator[pb.GenerateResponse]:
        """Names the prompt's prefix for cache_aware routing, off the event loop
        (tokenizing takes milliseconds), then relays as generate does."""
        assert self._prefix_namer is not None
        names = await asyncio.to_thread(self._prefix_namer.names, request)
        if names:
            md = [*md, (prefix_hash.METADATA_KEY, names)]
        call = self._start(request, md, timeout_s)
        known = request.model in self._known_models
        relay = _relay(call, idle_timeout_s, known_model=known, forwarding=forwarding)
        async with contextlib.aclosing(relay) as stream:
            async for message in stream:
                yield message

    def synthesize(
        self,
        request: pb.SynthesizeRequest,
        *,
        timeout_s: float,
        idle_timeout_s: float,
        tenant: str | None = None,
    ) -> AsyncIterator[pb.SynthesizeResponse]:
        md = _metadata(request.model, None, tenant)
        call = self._stub.Synthesize(request, metadata=md, timeout=timeout_s)
        return _relay(call, idle_timeout_s, known_model=request.model in self._known_models)


def _metadata(model: str, routing_key: str | None, tenant: str | None) -> list[tuple[str, str]]:
    """The router believes `tenant` from this edge's certificate only (router/auth.py)."""
    md = [(metadata.MODEL, model)]
    if routing_key:
        md.append((metadata.ROUTING_KEY, routing_key))
    if tenant:
        md.append((metadata.TENANT, tenant))
    return md


async def _relay(
    call: grpc.aio.UnaryStreamCall | MuxCall,
    idle_timeout_s: float,
    *,
    known_model: bool,
    forwarding: Forwarding | None = None,
) -> AsyncIterator[Any]:
    committed = False
    idle = _IdleWatch(call, idle_timeout_s)
    direct: tuple[Forwarding, ...] = ()
    if isinstance(call, MuxCall):
        # The router waits on a resumed stream's new replica, or a preempted stream's
        # turn in its queue, as it waits on a first message: its wait, not the model's.
        call.on_keepalive(idle.alive)
        if forwarding is not None:
            forwarding.tap(idle.heard)
            direct = (forwarding,)
    try:
        while True:
            if committed:  # the first message's wait is the router's to bound (relay.py)
                idle.reading()
            try:
                message = await call.read(*direct)
            except asyncio.CancelledError:
                if not idle.expired or _cancelling():
                    raise
                raise OpenAIError(
                    504,
                    f"The model sent nothing for {idle_timeout_s:g} s.",
                    type="timeout",
                    code="stream_idle_timeout",
                ) from None
            if message is grpc.aio.EOF:
                return
            idle.read()
            committed = True
            yield message
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc, committed=committed, known_model=known_model) from exc
    finally:
        idle.close()
        call.cancel()


class _IdleWatch:
    """Cancels a call whose pending read has waited `limit` s. One timer per stream,
    re-armed only when it fires: asyncio.timeout around each read made and cancelled a
    timer per message, and looked up the running loop and task (a getpid each) twice."""

    def __init__(self, call: grpc.aio.UnaryStreamCall | MuxCall, limit: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._call = call
        self._limit = limit
        self._since: float | None = None  # when the pending read began; None: not reading
        self.expired = False
        self._timer = self._loop.call_later(limit, self._check)

    def reading(self) -> None:
        self._since = self._loop.time()

    def read(self) -> None:
        self._since = None  # the caller's own waits (a slow client) are not the model's

    def heard(self, _: object) -> None:
        """A message taken while the read waits (forwarded): the model is not idle."""
        self._since = self._loop.time()

    def alive(self) -> None:
        """A keepalive: the router waits on the model for the caller, between two
        messages, as it waits for the first one; before that, nothing is timed."""
        if self._since is not None:
            self._since = self._loop.time()

    def _check(self) -> None:
        now = self._loop.time()
        if self._since is not None and now - self._since >= self._limit:
            self.expired = True
            self._call.cancel()  # the pending read raises CancelledError
            return
        self._timer = self._loop.call_at((self._since or now) + self._limit, self._check)

    def close(self) -> None:
        self._timer.cancel()


def _cancelling() -> bool:
    """Whether the task itself is being cancelled, which must win over an idle timeout."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
