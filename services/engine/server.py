"""Engine process lifecycle: serve health at once, load the model, drain on SIGTERM.

Health is NOT_SERVING while the model loads and warms up, SERVING after, and NOT_SERVING
again from the first SIGTERM, while in-flight streams finish (up to drain_grace_s); the
streams still running then are handed off: ended UNAVAILABLE with trailing metadata
tera-handoff, which the router resumes on another replica.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from services.common.gc_heap import freeze_startup_heap
from services.common.grpc_options import SERVER_OPTIONS
from services.common.health import (
    NOT_SERVING,
    SERVING,
    add_health_and_reflection,
    serve_health_only,
    set_status,
)
from services.common.mux_stream import start_listener, stop_together
from services.common.telemetry import grpc_server_interceptors
from services.common.tls import add_port
from services.engine.admission import InFlightLimit
from services.engine.backends import create_backend
from services.engine.config import EngineConfig
from services.engine.metrics import serve_metrics
from services.engine.servicer import EngineServicer
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc

log = logging.getLogger("tera.engine")

ENGINE_SERVICE = pb.DESCRIPTOR.services_by_name["Engine"].full_name
# Liveness is separate from readiness: a draining engine is NOT_SERVING (take no new
# work) yet alive (do not kill it), so Kubernetes probes liveness on this name.
LIVENESS_SERVICE = "liveness"
# After the grace, how long handed-off streams get to send their final status.
_HANDOFF_S = 2.0


async def serve(config: EngineConfig, stop: asyncio.Event) -> None:
    backend = create_backend(config)
    admission = InFlightLimit(config.max_in_flight)
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=grpc_server_interceptors())
    servicer = EngineServicer(
        backend, admission, coalesce_ms=config.default_coalesce_window_ms, system=config.backend
    )
    pb_grpc.add_EngineServicer_to_server(servicer, server)
    health = add_health_and_reflection(server, ENGINE_SERVICE)
    add_port(server, config.address, config.tls)
    await server.start()
    streams = await start_listener(
        servicer.multiplexed, config.host, config.mux_stream_port, config.tls, tracer="tera.engine"
    )
    servicer.mux_stream_port = streams.port if streams is not None else 0
    probes = await serve_health_only(health, config.host, config.health_port)
    await health.set(LIVENESS_SERVICE, SERVING)
    if config.metrics_port is not None:
        serve_metrics(config.metrics_port, config.host, admission, backend)
    await set_status(health, ENGINE_SERVICE, NOT_SERVING)
    log.info(
        "engine listening on %s; loading %s (%s backend)",
        config.address,
        config.model_id,
        config.backend,
    )
    try:
        if await _start_backend(backend, stop):
            freeze_startup_heap()  # the model and vLLM's front end are loaded and warm
            servicer.model_state = pb.MODEL_STATE_READY
            await set_status(health, ENGINE_SERVICE, SERVING)
            log.info("engine SERVING %s on %s", config.model_id, config.address)
            await stop.wait()
        servicer.model_state = pb.MODEL_STATE_UNAVAILABLE
        await set_status(health, ENGINE_SERVICE, NOT_SERVING)
        log.info("draining: %d in flight, grace %.0f s", admission.in_flight, config.drain_grace_s)
        if not await admission.drain(config.drain_grace_s):
            log.warning("grace period over: handing off %d streams", admission.hand_off())
            await admission.drain(_HANDOFF_S)
    finally:
        await stop_together(server, streams, grace=1.0)
        if probes is not None:
            await probes.stop(grace=None)
        await backend.stop()
        log.info("engine stopped")


async def _start_backend(backend: object, stop: asyncio.Event) -> bool:
    """Loads the model unless a stop signal comes first; True once it is ready."""
    starting = asyncio.ensure_future(backend.start())  # type: ignore[attr-defined]
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not starting.done():
        starting.cancel()
        return False
    starting.result()
    return True
