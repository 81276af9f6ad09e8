"""The standard gRPC health service and server reflection, as engine and router offer them."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

HealthServicer = health_aio.HealthServicer
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def add_health_and_reflection(server: grpc.aio.Server, service: str) -> HealthServicer:
    """Adds grpc.health.v1 and reflection (of service, health and reflection itself);
    returns the health servicer, whose statuses start unset."""
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [
            service,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    return health


async def set_status(health: HealthServicer, service: str, status: int) -> None:
    """The same status for the server as a whole ("") and for service."""
    for name in ("", service):
        await health.set(name, status)


async def serve_health_only(
    health: HealthServicer, host: str, port: int | None
) -> grpc.aio.Server | None:
    """A plaintext listener with grpc.health.v1 alone, for Kubernetes' gRPC probes (the
    kubelet speaks no TLS): it tells serving status and nothing else. None: no port."""
    if port is None:
        return None
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server
