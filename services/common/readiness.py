"""Blocking readiness probes, for supervisors and tests (not for the services' own loops)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def grpc_serving(address: str, timeout_s: float = 1.0) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def edge_lists_models(base_url: str, models: list[str], api_key: str | None = None) -> bool:
    request = urllib.request.Request(f"{base_url}/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            listed = {m["id"] for m in json.load(response)["data"]}
    except (OSError, urllib.error.URLError, ValueError, KeyError):
        return False
    return set(models) <= listed


def router_lists_models(address: str, models: list[str], timeout_s: float = 2.0) -> bool:
    from services.proto_gen.tera.v1 import engine_pb2 as pb
    from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            listed = pb_grpc.EngineStub(channel).ListModels(
                pb.ListModelsRequest(), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return set(models) <= {m.id for m in listed.models}


def http_healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url.removesuffix('/v1')}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False
