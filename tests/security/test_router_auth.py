"""Internal gRPC callers are tenants: the router, with mutual TLS and auth required,
serves a tenant key within its allowlist, refuses callers with no key (even with a
certificate from the CA), and believes `tera-tenant` metadata only from the edge."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
import yaml

from devstack.certs import ensure_local_certs
from devstack.readiness import client_tls
from services.catalog.schema import sha256_hex
from services.common import metadata
from services.common.mux import GENERATE
from services.common.mux_client import MuxChannel, StreamTransport
from services.common.tls import aio_channel, sync_channel
from services.edge.config import EdgeConfig
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc
from tests.conftest import SCRIPTED_MODEL, RunningStack
from tests.observability.otlp_receiver import OtlpReceiver
from tests.tenancy.conftest import RedisServer, redis_binary

OPEN, CLOSED = "org/open", "org/closed"
KEYS = {
    "wide": "sk-internal-wide",
    "narrow": "sk-internal-narrow",
    "limited": "sk-internal-rpm",
    "tokens": "sk-internal-tpm",
}


def _catalog(path: Path, redis_url: str | None = None) -> Path:
    data: dict = {
        "models": [{"id": OPEN, "aliases": ["open-alias"]}, {"id": CLOSED}],
        "keys": [
            {"name": "wide", "sha256": sha256_hex(KEYS["wide"])},
            {"name": "narrow", "sha256": sha256_hex(KEYS["narrow"]), "models": ["open-alias"]},
            {
                "name": "limited",
                "sha256": sha256_hex(KEYS["limited"]),
                "limits": {"requests_per_minute": 2},
            },
            {
                "name": "tokens",
                "sha256": sha256_hex(KEYS["tokens"]),
                "limits": {"tokens_per_minute": 100},
            },
        ],
    }
    if redis_url:
        data["redis"] = {"url": redis_url}
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def redis_url() -> Iterator[str]:
    server = RedisServer(redis_binary()).start()
    try:
        yield server.url
    finally:
        server.stop()


def _guarded(
    scripted_stack: Callable[..., RunningStack],
    tmp_path: Path,
    redis_url: str | None = None,
    env: dict[str, str] | None = None,
    edge_args: list[str] | None = None,
    router_args: list[str] | None = None,
    colocated: bool = False,
) -> RunningStack:
    catalog = _catalog(tmp_path / "catalog.yaml", redis_url)
    (tmp_path / "router.yaml").write_text(yaml.safe_dump({"auth": {"required": True}}))
    return scripted_stack(
        engines=2,
        model_ids=[OPEN, CLOSED],
        per_engine_args=[["--model-id", m, "--scripted", json.dumps({})] for m in (OPEN, CLOSED)],
        tls_dir=ensure_local_certs(tmp_path / "tls"),
        router_args=[
            "--config",
            str(tmp_path / "router.yaml"),
            "--catalog",
            str(catalog),
            *(router_args or []),
        ],
        edge_args=["--catalog", str(catalog), *(edge_args or [])],
        env=env or {},
        colocated=colocated,
    )


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture
def guarded(
    scripted_stack: Callable[..., RunningStack], tmp_path: Path, receiver: OtlpReceiver
) -> RunningStack:
    """Traced: every service exports its spans to `receiver`."""
    return _guarded(scripted_stack, tmp_path, env=receiver.env)


@pytest.fixture(params=["per_call", "mux", "stream"])
def transport(request: pytest.FixtureRequest) -> str:
    """How callers reach the router: a call per stream, or streams on one GenerateMux
    call or on one link to its stream listener (whose peer is known by the TLS
    handshake's certificate), each guarded as a plain call is (the edge's
    router_transport)."""
    return request.param


@pytest.fixture
def guarded_over(
    scripted_stack: Callable[..., RunningStack], tmp_path: Path, transport: str
) -> RunningStack:
    """`guarded`, untraced, its edge on `transport`."""
    return _guarded(
        scripted_stack,
        tmp_path,
        edge_args=["--router-transport", transport],
        router_args=["--mux-stream-port", "0"],
    )


def _transport(stack: RunningStack) -> str:
    """The edge's router_transport, which _generate uses too."""
    args = stack.stack.plan.edge_args
    flag = "--router-transport"
    return args[args.index(flag) + 1] if flag in args else EdgeConfig().router_transport


async def _generate(
    stack: RunningStack,
    model: str,
    *,
    cert: str,
    md: list[tuple[str, str]] = (),
    max_tokens: int = 2,
) -> grpc.StatusCode:
    plan = stack.stack.plan
    assert plan.tls_dir is not None
    request = pb.GenerateRequest(
        request_id="r",
        model=model,
        chat=pb.ChatInput(messages=[pb.ChatMessage(role="user", content="hi")]),
        sampling=pb.SamplingParams(max_tokens=max_tokens),
    )
    tls = client_tls(plan.tls_dir / cert)
    address = f"127.0.0.1:{plan.router_port}"
    async with aio_channel(address, tls) as channel:
        if (transport := _transport(stack)) != "per_call":
            over = StreamTransport(tls) if transport == "stream" else None
            call = MuxChannel(lambda: channel, address, over).unary_stream(GENERATE)
            stream = call(request.SerializeToString(), metadata=tuple(md), timeout=20)
        else:
            stream = pb_grpc.EngineStub(channel).Generate(request, metadata=md, timeout=20)
        try:
            while await stream.read() is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def _bearer(name: str) -> list[tuple[str, str]]:
    return [(metadata.AUTHORIZATION, f"Bearer {KEYS[name]}")]


async def test_internal_callers_need_a_tenant_key(guarded_over: RunningStack) -> None:
    # The engine's certificate is from the right CA, but it is no edge and has no key.
    assert await _generate(guarded_over, OPEN, cert="engine") == grpc.StatusCode.UNAUTHENTICATED
    wrong = [(metadata.AUTHORIZATION, "Bearer sk-nope")]
    assert await _generate(guarded_over, OPEN, cert="engine", md=wrong) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    for model in (OPEN, CLOSED):
        assert await _generate(guarded_over, model, cert="engine", md=_bearer("wide")) == (
            grpc.StatusCode.OK
        )


async def test_allowlist_and_forged_tenant_metadata(guarded_over: RunningStack) -> None:
    narrow = _bearer("narrow")
    assert await _generate(guarded_over, OPEN, cert="engine", md=narrow) == grpc.StatusCode.OK
    denied = grpc.StatusCode.PERMISSION_DENIED
    assert await _generate(guarded_over, CLOSED, cert="engine", md=narrow) == denied
    forged = [(metadata.TENANT, "wide")]
    assert await _generate(guarded_over, CLOSED, cert="engine", md=narrow + forged) == denied
    assert await _generate(guarded_over, OPEN, cert="engine", md=forged) == (
        grpc.StatusCode.UNAUTHENTICATED
    ), "tenant metadata from a non-edge caller is ignored"


async def test_the_edge_speaks_for_its_users(guarded_over: RunningStack) -> None:
    body = {"model": OPEN, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    headers = {"Authorization": f"Bearer {KEYS['narrow']}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{guarded_over.base_url}/chat/completions", json=body, headers=headers) as r,
    ):
        assert r.status == 200, await r.text()
    assert await _generate(guarded_over, OPEN, cert="edge") == grpc.StatusCode.OK
    edge_log = (guarded_over.stack.plan.log_dir / "edge.log").read_text()  # type: ignore[operator]
    transport = _transport(guarded_over)
    assert ("opening a multiplexed call" in edge_log) == (transport == "mux")
    assert ("opening a multiplexed stream link" in edge_log) == (transport == "stream")


async def test_a_colocated_edge_speaks_for_its_users_over_the_in_memory_link(
    scripted_stack: Callable[..., RunningStack], tmp_path: Path
) -> None:
    """The router in the edge's process (services/gateway) takes the joined link as the
    edge's, by the names of its certificate, as the TLS handshake would have told it:
    the edge's users are served, within their allowlists."""
    stack = _guarded(scripted_stack, tmp_path, colocated=True)
    headers = {"Authorization": f"Bearer {KEYS['narrow']}"}
    statuses = {}
    async with aiohttp.ClientSession() as session:
        for model in (OPEN, CLOSED):
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            url = f"{stack.base_url}/chat/completions"
            async with session.post(url, json={**body, "max_tokens": 2}, headers=headers) as r:
                statuses[model] = (r.status, await r.text())
    assert statuses[OPEN][0] == 200, statuses[OPEN]
    assert statuses[CLOSED][0] in (403, 404), statuses[CLOSED]
    log = (stack.stack.plan.log_dir / "gateway.log").read_text()  # type: ignore[operator]
    assert "joined in this process" in log


async def test_no_secret_reaches_the_logs(guarded: RunningStack, receiver: OtlpReceiver) -> None:
    """Keys, bearer tokens and private keys never appear in any process's output, the
    edge's metrics or the traces, after traffic that carried them (good and bad) through
    every door."""
    await test_internal_callers_need_a_tenant_key(guarded)
    await test_the_edge_speaks_for_its_users(guarded)
    plan = guarded.stack.plan
    assert plan.log_dir is not None and plan.tls_dir is not None
    logs = "".join(p.read_text(errors="replace") for p in plan.log_dir.glob("*.log"))
    async with aiohttp.ClientSession() as session, session.get(guarded.ops_url + "/metrics") as r:
        logs += await r.text()  # and the metrics
    assert "router" in logs and "edge" in logs, "the logs were captured"
    await asyncio.sleep(1)  # the last spans' export (OTEL_BSP_SCHEDULE_DELAY is 100 ms)
    spans = receiver.spans
    assert {"tera-edge", "tera-router", "tera-engine"} <= {s.service for s in spans}
    logs += json.dumps([[s.name, s.attributes, s.events] for s in spans], default=str)
    secrets = [*KEYS.values(), "sk-nope", "PRIVATE KEY"]
    secrets += [
        (plan.tls_dir / s / "tls.key").read_text().splitlines()[1]
        for s in ("edge", "router", "engine")
    ]
    assert not [s for s in secrets if s in logs]


async def test_rpm_limit_is_shared_with_http_through_redis(
    scripted_stack: Callable[..., RunningStack], tmp_path: Path, redis_url: str
) -> None:
    stack = _guarded(scripted_stack, tmp_path, redis_url)
    body = {"model": OPEN, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    headers = {"Authorization": f"Bearer {KEYS['limited']}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{stack.base_url}/chat/completions", json=body, headers=headers) as r,
    ):
        assert r.status == 200, "the first of 2 per minute, over HTTP"
    limited = _bearer("limited")
    assert await _generate(stack, OPEN, cert="engine", md=limited) == grpc.StatusCode.OK
    assert await _generate(stack, OPEN, cert="engine", md=limited) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    ), "the third, over gRPC, counts the HTTP one"


async def test_tpm_is_shared_with_http_through_redis(
    scripted_stack: Callable[..., RunningStack], tmp_path: Path, redis_url: str
) -> None:
    stack = _guarded(scripted_stack, tmp_path, redis_url)
    body = {"model": OPEN, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 95}
    headers = {"Authorization": f"Bearer {KEYS['tokens']}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{stack.base_url}/chat/completions", json=body, headers=headers) as r,
    ):
        assert r.status == 200, "5 + 95 of 100 tokens per minute, over HTTP"
    tokens = _bearer("tokens")
    assert await _generate(stack, OPEN, cert="engine", md=tokens, max_tokens=2) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    ), "the gRPC call's ~6 tokens do not fit beside the HTTP call's 100"


def _list_models(address: str, tls_dir: Path, md: list[tuple[str, str]] = ()) -> grpc.StatusCode:
    with sync_channel(address, client_tls(tls_dir)) as channel:
        try:
            pb_grpc.EngineStub(channel).ListModels(pb.ListModelsRequest(), metadata=md, timeout=5)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def test_tera_run_with_keys_requires_them_at_the_router(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tera run` (mutual TLS, its default) with API keys: the router takes a key or the
    edge's certificate, like the edge takes only keys; HTTP with a key works as before."""
    from tests.devstack.cli import tera_run

    monkeypatch.setenv("TERA_API_KEYS", "sk-run-a,sk-run-b")
    cache = tmp_path / "cache"
    with tera_run(tmp_path, {}, plaintext=False, args=["--cache-dir", str(cache)]) as run:
        chat = {"model": SCRIPTED_MODEL, "messages": [{"role": "user", "content": "hi"}]}
        async with aiohttp.ClientSession() as session:
            for key, status in (("sk-run-b", 200), ("sk-nope", 401)):
                headers = {"Authorization": f"Bearer {key}"}
                async with session.post(
                    f"{run.base_url}/chat/completions", json=chat, headers=headers
                ) as r:
                    assert r.status == status, await r.text()
        engine_cert = cache / "tls" / "engine"
        assert _list_models(run.router, engine_cert) == grpc.StatusCode.UNAUTHENTICATED
        key = [(metadata.AUTHORIZATION, "Bearer sk-run-a")]
        assert _list_models(run.router, engine_cert, key) == grpc.StatusCode.OK
        assert _list_models(run.router, cache / "tls" / "edge") == grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("keys", "env", "plaintext", "expected"),
    [
        ([{"name": "a", "key": "sk-a"}], "", False, ["--require-auth", "--catalog"]),
        ([], "sk-env", False, ["--require-auth", "--catalog"]),
        ([], "", False, []),
        ([{"name": "a", "key": "sk-a"}], "sk-env", True, []),
    ],
    ids=["catalog keys", "env keys", "no keys: open as the edge", "plaintext: no edge identity"],
)
def test_tera_run_requires_router_auth_when_keys_exist(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    keys: list[dict[str, str]],
    env: str,
    plaintext: bool,
    expected: list[str],
) -> None:
    from devstack.run import _secured, build_parser
    from devstack.stack import StackPlan

    monkeypatch.setenv("TERA_API_KEYS", env)
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"models": [{"id": OPEN}], "keys": keys}))
    flags = ["--catalog", str(catalog), "--cache-dir", str(tmp_path)]
    args = build_parser().parse_args([*flags, *(["--plaintext"] if plaintext else [])])
    plan = _secured(StackPlan(edge_port=1, router_port=2, engine_ports=[3]), args)
    assert [a for a in plan.router_args if a.startswith("--")] == expected
