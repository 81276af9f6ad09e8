"""Router process: the tera.v1.Engine service, relayed; models and load aggregated."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from services.common.gc_heap import freeze_startup_heap
from services.common.grpc_options import SERVER_OPTIONS
from services.common.health import (
    SERVING,
    add_health_and_reflection,
    serve_health_only,
    set_status,
)
from services.common.mux import GENERATE
from services.common.mux_server import MuxServer
from services.common.mux_stream import start_listener, stop_together
from services.common.telemetry import grpc_server_interceptors
from services.common.tls import add_port
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.router.auth import Authenticator, AuthInterceptor, guarded
from services.router.config import RouterConfig
from services.router.pool import ReplicaPool
from services.router.relay import Relay
from services.router.runtime import RouterRuntime
from services.router.tenant_limits import TenantLimits

log = logging.getLogger("tera.router")

SERVICE = pb.DESCRIPTOR.services_by_name["Engine"].full_name
STREAMING_METHODS = ("Generate", "Synthesize")

# A streaming handler (request, context) -> responses, and what guards one by method.
Stream = Callable[[bytes, Any], AsyncIterator[bytes]]
Guard = Callable[[Stream, str], Stream]


def _relayed(relay: Relay, method: str) -> grpc.RpcMethodHandler:
    path = f"/{SERVICE}/{method}"

    async def handler(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for chunk in relay.stream(path, request, context):
            yield chunk

    # No (de)serializers: request and responses stay bytes end to end.
    return grpc.unary_stream_rpc_method_handler(handler)


def multiplexed_handlers(relay: Relay, guard: Guard | None) -> dict[str, Stream]:
    """What edges' multiplexed calls and stream links serve (router_transport: mux or
    stream): each stream is relayed as a plain Generate call is, by the same handler, and
    guarded as one when auth is required."""
    stream = functools.partial(relay.stream, GENERATE)
    return {GENERATE: stream if guard is None else guard(stream, GENERATE)}


def _multiplexed(relayed: dict[str, Stream]) -> grpc.RpcMethodHandler:
    """GenerateMux: `relayed`'s streams over one gRPC call."""

    async def handler(
        frames: AsyncIterator[pb.MuxFrames], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.MuxFrames]:
        async for batch in MuxServer(relayed, context, tracer="tera.router").serve(frames):
            yield batch

    return grpc.stream_stream_rpc_method_handler(
        handler,
        request_deserializer=pb.MuxFrames.FromString,
        response_serializer=pb.MuxFrames.SerializeToString,
    )


def _unary(fn: Callable, request_type: type, response_type: type) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        fn,
        request_deserializer=request_type.FromString,
        response_serializer=response_type.SerializeToString,
    )


def build_handler(
    pool: ReplicaPool, relay: Relay, guard: Guard | None = None, mux_stream_port: int = 0
) -> grpc.GenericRpcHandler:
    """guard: what auth wraps a streaming handler in (None: no auth); the interceptor
    guards plain calls, this the streams of multiplexed ones. mux_stream_port: the stream
    listener's, reported in GetLoad (0: none)."""

    async def list_models(request: pb.ListModelsRequest, context: object) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=pool.models())

    async def get_load(request: pb.GetLoadRequest, context: object) -> pb.LoadReport:
        replicas = [r for r in pool.replicas.values() if r.serving]
        return pb.LoadReport(
            in_flight=sum(r.in_flight for r in replicas),
            running=sum(r.reported.running for r in replicas),
            waiting=sum(r.reported.waiting for r in replicas),
            max_in_flight=sum(r.reported.max_in_flight for r in replicas),
            serving_replicas=len(replicas),
            mux_stream_port=mux_stream_port,
        )

    handlers = {m: _relayed(relay, m) for m in STREAMING_METHODS}
    handlers["GenerateMux"] = _multiplexed(multiplexed_handlers(relay, guard))
    handlers["ListModels"] = _unary(list_models, pb.ListModelsRequest, pb.ListModelsResponse)
    handlers["GetLoad"] = _unary(get_load, pb.GetLoadRequest, pb.LoadReport)
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


async def serve(load_config: Callable[[], RouterConfig], stop: asyncio.Event) -> None:
    """Runs the router; SIGHUP re-reads the config (load_config) and applies it."""
    config = load_config()
    runtime = RouterRuntime(config)
    if config.metrics_port is not None:
        runtime.metrics.serve(config.metrics_port, config.host)
    interceptors = grpc_server_interceptors()
    guard = None
    if config.auth.required:
        limits = TenantLimits(config.auth.redis, runtime.metrics.registry)
        authenticator = Authenticator(config.auth)
        interceptors.append(AuthInterceptor(authenticator, limits))
        guard = functools.partial(guarded, auth=authenticator, limits=limits)
    streams = await start_listener(
        multiplexed_handlers(runtime.relay, guard),
        config.host,
        config.mux_stream_port,
        config.tls,
        tracer="tera.router",
    )
    stream_port = streams.port if streams is not None else 0
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
    server.add_generic_rpc_handlers(
        (build_handler(runtime.pool, runtime.relay, guard, stream_port),)
    )
    health = add_health_and_reflection(server, SERVICE)
    add_port(server, config.address, config.tls)
    await server.start()
    probes = await serve_health_only(health, config.host, config.health_port)
    freeze_startup_heap()
    await set_status(health, SERVICE, SERVING)
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGHUP, lambda: _reload(runtime, load_config)
    )
    log.info(
        "router listening on %s; replicas=%s dns=%s policy=%s",
        config.address,
        config.replicas,
        config.dns,
        config.policy,
    )
    try:
        await stop.wait()
    finally:
        await health.enter_graceful_shutdown()
        await stop_together(server, streams, grace=5.0)
        if probes is not None:
            await probes.stop(grace=None)
        await runtime.close()
        log.info("router stopped")


def _reload(runtime: RouterRuntime, load_config: Callable[[], RouterConfig]) -> None:
    try:
        runtime.reload(load_config())
    except Exception as exc:  # a bad edit must not take the router down
        log.error("configuration reload failed, keeping the old one: %s", exc)
