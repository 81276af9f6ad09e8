"""A direct gRPC caller with a tenant key gets what its HTTP traffic gets at the edge:
its tokens-per-minute budget (reserved from the request, settled with the usage the
stream reports; over it, RESOURCE_EXHAUSTED with Retry-After in the trailers), its usage
counted, and its own fair-queue tenant and class, whatever tenancy metadata it sends.
A service whose client certificate the router maps to a key is that key's tenant
without sending the key; any other certificate from the CA is UNAUTHENTICATED."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from devstack.certs import Authority, ensure_local_certs, issue
from devstack.processes import free_port
from devstack.readiness import client_tls
from services.catalog.schema import sha256_hex
from services.common import metadata
from services.common.tls import aio_channel
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc
from tests.conftest import SCRIPTED_MODEL, RunningStack
from tests.faults.fleet import router_metric

WORKER_SAN = "worker.batch.internal"  # a DNS SAN of the batch worker's certificate
KEYS = {"tpm": "sk-internal-tpm", "bulk": "sk-internal-bulk"}
CATALOG_KEYS = [
    {"name": "tpm", "sha256": sha256_hex(KEYS["tpm"]), "limits": {"tokens_per_minute": 100}},
    {"name": "bulk", "sha256": sha256_hex(KEYS["bulk"]), "priority": "batch"},
]
ROUTER = {
    "auth": {"required": True, "certificate_tenants": {WORKER_SAN: "bulk"}},
    "hedge": {"enabled": False},
    "health": {"check_interval_s": 0.2, "check_timeout_s": 0.5, "load_poll_interval_s": 0.2},
    "fair": {"queue_size": 8},
}


@dataclass
class Answer:
    code: grpc.StatusCode
    trailers: dict[str, str]


def _stack(scripted_stack: Callable[..., RunningStack], tmp_path: Path) -> RunningStack:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"models": [{"id": SCRIPTED_MODEL}], "keys": CATALOG_KEYS}))
    (tmp_path / "router.yaml").write_text(yaml.safe_dump(ROUTER))
    engine = ["--scripted", json.dumps({"tokens_per_second": 20}), "--max-in-flight", "1"]
    stack = scripted_stack(
        per_engine_args=[engine],
        tls_dir=ensure_local_certs(tmp_path / "tls"),
        router_args=[
            *("--config", str(tmp_path / "router.yaml"), "--catalog", str(catalog)),
            *("--metrics-port", str(free_port())),
        ],
        edge_args=["--catalog", str(catalog)],
    )
    time.sleep(0.5)  # the router has polled the engine's admission limit
    return stack


async def _generate(
    stack: RunningStack,
    key: str | None,
    max_tokens: int | None,
    extra: list[tuple[str, str]] = (),
    started: asyncio.Event | None = None,
    cert: Path | None = None,
) -> Answer:
    plan = stack.stack.plan
    assert plan.tls_dir is not None
    request = pb.GenerateRequest(
        request_id="r",
        model=SCRIPTED_MODEL,
        chat=pb.ChatInput(messages=[pb.ChatMessage(role="user", content="hi")]),
        sampling=pb.SamplingParams(max_tokens=max_tokens),
    )
    md = [*([(metadata.AUTHORIZATION, f"Bearer {KEYS[key]}")] if key else []), *extra]
    tls = client_tls(cert or plan.tls_dir / "engine")
    async with aio_channel(f"127.0.0.1:{plan.router_port}", tls) as ch:
        call = pb_grpc.EngineStub(ch).Generate(request, metadata=md, timeout=20)
        try:
            async for _ in call:
                if started is not None:
                    started.set()
        except grpc.aio.AioRpcError as exc:
            return Answer(exc.code(), dict(exc.trailing_metadata() or ()))
        return Answer(grpc.StatusCode.OK, dict(await call.trailing_metadata() or ()))


async def test_tokens_per_minute_reserved_settled_and_refused_with_retry_after(
    scripted_stack: Callable[..., RunningStack], tmp_path: Path
) -> None:
    stack = _stack(scripted_stack, tmp_path)
    # No max_tokens: ~515 estimated, capped at the whole minute's 100; it uses 5 + 16.
    assert (await _generate(stack, "tpm", None)).code == grpc.StatusCode.OK
    # 54 estimated: fits only because the first gave back what it did not use.
    assert (await _generate(stack, "tpm", 50)).code == grpc.StatusCode.OK
    refused = await _generate(stack, "tpm", 50)  # 76 used + 54 > 100
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry_after = int(refused.trailers["retry-after"])
    assert 10 <= retry_after <= 20, "30 tokens over, one every 0.6 s"
    assert refused.trailers["grpc-retry-pushback-ms"] == str(retry_after * 1000)
    tokens = "tera_key_tokens_total"
    assert router_metric(stack, tokens, key="tpm", kind="completion") == 16 + 50
    assert router_metric(stack, tokens, key="tpm", kind="prompt") == 5 + 5
    requests = "tera_key_requests_total"
    assert router_metric(stack, requests, key="tpm", status="OK") == 2
    assert router_metric(stack, requests, key="tpm", status="RESOURCE_EXHAUSTED") == 1


async def test_a_keys_fair_queue_class_and_tenant_cannot_be_forged(
    scripted_stack: Callable[..., RunningStack], tmp_path: Path
) -> None:
    stack = _stack(scripted_stack, tmp_path)
    started = asyncio.Event()
    holder = asyncio.create_task(_generate(stack, "bulk", 10, started=started))
    await started.wait()  # the engine's one slot is taken for ~0.5 s
    forged = [
        (metadata.TENANT, "someone-else"),
        (metadata.PRIORITY, "interactive"),
        (metadata.WEIGHT, "100"),
    ]
    queued = await _generate(stack, "bulk", 2, forged)
    assert queued.code == grpc.StatusCode.OK and (await holder).code == grpc.StatusCode.OK
    wait = "tera_router_queue_wait_seconds_count"
    assert router_metric(stack, wait, priority="batch") == 1, "it waited as the key's class"
    assert router_metric(stack, wait, priority="interactive") == 0
    dispatched = "tera_router_dispatched_tokens_total"
    assert router_metric(stack, dispatched, tenant="bulk") > 0
    assert router_metric(stack, dispatched, tenant="someone-else") == 0


async def test_a_service_is_the_tenant_its_certificate_maps_to(
    scripted_stack: Callable[..., RunningStack], tmp_path: Path
) -> None:
    stack = _stack(scripted_stack, tmp_path)
    tls = tmp_path / "tls"
    ca = Authority(
        x509.load_pem_x509_certificate((tls / "engine" / "ca.crt").read_bytes()),
        serialization.load_pem_private_key((tls / "ca.key").read_bytes(), None),  # type: ignore[arg-type]
    )
    worker = issue(ca, "batch-worker", tmp_path / "worker", names=(WORKER_SAN,))
    stranger = issue(ca, "stranger", tmp_path / "stranger")
    assert (await _generate(stack, None, 2, cert=worker)).code == grpc.StatusCode.OK
    requests = "tera_key_requests_total"
    assert router_metric(stack, requests, key="bulk", status="OK") == 1, "billed to its key"
    assert (await _generate(stack, None, 2, cert=stranger)).code == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    forged = [(metadata.TENANT, "bulk")]
    assert (await _generate(stack, None, 2, forged, cert=stranger)).code == (
        grpc.StatusCode.UNAUTHENTICATED
    )
