"""Blocking readiness probes, for supervisors and tests (not for the services' own loops)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.tls import TLSConfig, sync_channel, tls_dir


def grpc_serving(address: str, timeout_s: float = 1.0, *, tls: TLSConfig | None = None) -> bool:
    with sync_channel(address, tls) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def edge_lists_models(base_url: str, models: list[str], api_key: str | None = None) -> bool:
    """The edge lists these models as ready (it lists loading ones too, with a status)."""
    request = urllib.request.Request(f"{base_url}/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            data = json.load(response)["data"]
            listed = {m["id"] for m in data if m.get("status", "ready") == "ready"}
    except (OSError, urllib.error.URLError, ValueError, KeyError):
        return False
    return set(models) <= listed


def _ask_router(
    address: str, method: str, timeout_s: float, tls: TLSConfig | None = None
) -> Any | None:
    """One unary call on the router's Engine service; None if it does not answer."""
    from services.proto_gen.tera.v1 import engine_pb2 as pb
    from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc

    requests = {"ListModels": pb.ListModelsRequest, "GetLoad": pb.GetLoadRequest}
    with sync_channel(address, tls) as channel:
        stub = pb_grpc.EngineStub(channel)
        try:
            return getattr(stub, method)(requests[method](), timeout=timeout_s)
        except grpc.RpcError:
            return None


def router_lists_models(
    address: str, models: list[str], timeout_s: float = 2.0, *, tls: TLSConfig | None = None
) -> bool:
    """The router has a ready replica of each of these models."""
    listed = _ask_router(address, "ListModels", timeout_s, tls)
    if listed is None:
        return False
    return set(models) <= {m.id for m in listed.models if m.state == 0}  # MODEL_STATE_READY


def router_has_replicas(
    address: str, replicas: int, timeout_s: float = 2.0, *, tls: TLSConfig | None = None
) -> bool:
    """The router has this many replicas in rotation (its own health view, which can
    lag behind the engines' own readiness)."""
    load = _ask_router(address, "GetLoad", timeout_s, tls)
    return load is not None and load.serving_replicas >= replicas


def http_healthy(base_url: str, path: str = "/health") -> bool:
    """The edge answers 200 on path (/health: up; /ready: every model servable)."""
    try:
        with urllib.request.urlopen(f"{base_url.removesuffix('/v1')}{path}", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def client_tls(folder: Path | None) -> TLSConfig | None:
    """A service's certificate folder (devstack.certs layout) as client credentials."""
    return None if folder is None else TLSConfig.model_validate(tls_dir(str(folder)))
