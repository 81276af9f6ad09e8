"""The tera.v1.Engine servicer: admission, coalescing and error mapping around a backend."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from services.common import metadata
from services.common.bounded import clip_message
from services.common.mux import GENERATE
from services.common.mux_server import MuxServer
from services.common.priority import priority_rank
from services.engine.admission import InFlightLimit
from services.engine.backends.base import Backend
from services.engine.coalesce import coalesce
from services.engine.errors import EngineError
from services.engine.observe import observe_generation
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc

log = logging.getLogger("tera.engine")


class EngineServicer(pb_grpc.EngineServicer):
    def __init__(
        self, backend: Backend, admission: InFlightLimit, *, coalesce_ms: int, system: str
    ) -> None:
        self._backend = backend
        self._system = system
        self._admission = admission
        self._default_coalesce_ms = coalesce_ms
        # Reported with the models: LOADING until the server says the backend is ready.
        self.model_state: pb.ModelState = pb.MODEL_STATE_LOADING
        self.mux_stream_port = 0  # reported in GetLoad once the listener is up
        # What a multiplexed call or stream link serves, by method.
        self.multiplexed = {GENERATE: self._generate_bytes}

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        window_ms = request.coalesce_window_ms or self._default_coalesce_ms
        # The class the router or edge vouched for (the engine trusts its callers).
        priority = priority_rank(dict(context.invocation_metadata() or ()).get(metadata.PRIORITY))
        stream = self._admitted(lambda: self._backend.generate(request, priority=priority))
        observed = observe_generation(
            request, coalesce(stream, window_ms / 1000), system=self._system, priority=priority
        )
        with self._admission.handed_off_at_grace():
            async for message in _abort_on_error(observed, context, self._admission):
                yield message

    async def GenerateMux(
        self, request_iterator: AsyncIterator[pb.MuxFrames], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.MuxFrames]:
        mux = MuxServer(self.multiplexed, context, tracer="tera.engine")
        async for batch in mux.serve(request_iterator):
            yield batch

    async def _generate_bytes(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        """Generate on serialized messages, as GenerateMux carries them."""
        async for message in self.Generate(pb.GenerateRequest.FromString(request), context):
            yield message.SerializeToString()

    async def Synthesize(
        self, request: pb.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SynthesizeResponse]:
        stream = self._admitted(lambda: self._backend.synthesize(request))
        async for message in _abort_on_error(stream, context):
            yield message

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        models = self._backend.models()
        for model in models:
            model.state = self.model_state
        return pb.ListModelsResponse(models=models)

    async def GetLoad(
        self, request: pb.GetLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoadReport:
        load = self._backend.load()
        return pb.LoadReport(
            in_flight=self._admission.in_flight,
            running=load.running,
            waiting=load.waiting,
            kv_cache_usage=load.kv_cache_usage,
            max_in_flight=self._admission.max_in_flight,
            total_requests=self._admission.admitted_total,
            serving_replicas=1,
            mux_stream_port=self.mux_stream_port,
            arrivals_per_s=self._admission.arrivals_per_s(),
        )

    async def WatchPrefixCache(
        self, request: pb.WatchPrefixCacheRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PrefixCacheEvent]:
        feed = self._backend.prefix_cache()
        if feed is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this engine has no prefix cache")
        async for event in feed.watch():
            yield event

    async def _admitted(self, start: Callable[[], AsyncIterator[Any]]) -> AsyncIterator[Any]:
        async with self._admission.admit():
            async for message in start():
                yield message


async def _abort_on_error(
    stream: AsyncIterator[Any],
    context: grpc.aio.ServicerContext,
    admission: InFlightLimit | None = None,
) -> AsyncIterator[Any]:
    """Ends the call with the error's status code; unexpected errors become INTERNAL. A
    stream handed off at the end of a drain ends UNAVAILABLE, marked for the router to
    resume it on another replica."""
    try:
        async for message in stream:
            yield message
    except asyncio.CancelledError:
        if admission is None or not admission.handed_off:
            raise
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            "the engine is shutting down; the stream is handed off",
            trailing_metadata=((metadata.HANDOFF, "drain"),),
        )
    except EngineError as exc:
        trailing = ((metadata.ERROR_PARAM, exc.param),) if exc.param else ()
        await context.abort(exc.code, exc.message, trailing_metadata=trailing)
    except Exception as exc:
        log.exception("request failed")
        await context.abort(grpc.StatusCode.INTERNAL, clip_message(f"engine error: {exc}"))
