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
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from services.common.grpc_options import SERVER_OPTIONS
from services.common.telemetry import grpc_server_interceptors
from services.engine.admission import Admission
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
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _set_health(health: HealthServicer, status: int) -> None:
    for service in ("", ENGINE_SERVICE):
        await health.set(service, status)


async def serve(config: EngineConfig, stop: asyncio.Event) -> None:
    backend = create_backend(config)
    admission = Admission(config.max_in_flight)
    health = HealthServicer()
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=grpc_server_interceptors())
    pb_grpc.add_EngineServicer_to_server(
        EngineServicer(
            backend,
            admission,
            coalesce_ms=config.default_coalesce_window_ms,
            system=config.backend,
        ),
        server,
    )
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [
            ENGINE_SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    server.add_insecure_port(config.address)
    await server.start()
    await health.set(LIVENESS_SERVICE, SERVING)
    if config.metrics_port is not None:
        serve_metrics(config.metrics_port, config.host, admission, backend)
    await _set_health(health, NOT_SERVING)
    log.info(
        "engine listening on %s; loading %s (%s backend)",
        config.address,
        config.model_id,
        config.backend,
    )
    try:
        if await _start_backend(backend, stop):
            await _set_health(health, SERVING)
            log.info("engine SERVING %s on %s", config.model_id, config.address)
            await stop.wait()
        await _set_health(health, NOT_SERVING)
        log.info("draining: %d in flight, grace %.0f s", admission.in_flight, config.drain_grace_s)
        if not await admission.drain(config.drain_grace_s):
            log.warning("grace period over: handing off %d streams", admission.hand_off())
            await admission.drain(_HANDOFF_S)
    finally:
        await server.stop(grace=1.0)
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
