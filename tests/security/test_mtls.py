"""Mutual TLS on every gRPC hop, with real processes and stand-in engines: the router
refuses callers without a certificate from its CA, an engine with a wrong certificate
never enters rotation, and the edge → router → engine path works end to end."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import grpc
import pytest

from devstack.certs import issue, new_authority
from devstack.processes import free_port, wait_until
from devstack.readiness import client_tls, grpc_serving, router_has_replicas
from devstack.stack import Stack, StackPlan
from services.common.mux import GENERATE
from services.common.tls import sync_channel
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc
from tests.conftest import SCRIPTED_MODEL, RunningStack, scripted_args

CHAT = {"model": SCRIPTED_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    from devstack.certs import ensure_local_certs

    return ensure_local_certs(tmp_path / "tls")


@pytest.fixture
def stranger(tmp_path: Path) -> Path:
    """Certificates with the right names from another CA."""
    ca = new_authority("someone else's CA")
    for service in ("edge", "router", "engine"):
        issue(ca, service, tmp_path / "stranger" / service)
    return tmp_path / "stranger"


def _list_models(address: str, channel: grpc.Channel) -> grpc.StatusCode:
    try:
        pb_grpc.EngineStub(channel).ListModels(pb.ListModelsRequest(), timeout=3)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_edge_router_engine_end_to_end_over_mtls(
    scripted_stack: Callable[..., RunningStack], certs: Path, stranger: Path
) -> None:
    stack = scripted_stack(tls_dir=certs)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{stack.base_url}/chat/completions", json=CHAT) as r,
    ):
        assert r.status == 200, await r.text()
    router = f"127.0.0.1:{stack.stack.plan.router_port}"
    with sync_channel(router, client_tls(certs / "edge")) as channel:
        assert _list_models(router, channel) == grpc.StatusCode.OK
    with grpc.insecure_channel(router) as channel:
        assert _list_models(router, channel) == grpc.StatusCode.UNAVAILABLE, "plaintext"
    server_only = grpc.ssl_channel_credentials((certs / "edge" / "ca.crt").read_bytes())
    with grpc.secure_channel(router, server_only) as channel:
        assert _list_models(router, channel) == grpc.StatusCode.UNAVAILABLE, "no client cert"
    foreign = client_tls(stranger / "edge")
    assert foreign is not None
    foreign = foreign.model_copy(update={"ca": certs / "edge" / "ca.crt"})  # trusts the router
    with sync_channel(router, foreign) as channel:
        assert _list_models(router, channel) == grpc.StatusCode.UNAVAILABLE, "another CA"
    engine = stack.engine_addresses[0]
    with sync_channel(engine, client_tls(stranger / "router")) as channel:
        assert _list_models(engine, channel) == grpc.StatusCode.UNAVAILABLE, "engine refuses too"


def test_engine_with_a_wrong_certificate_never_enters_rotation(
    tmp_path: Path, certs: Path, stranger: Path
) -> None:
    good, rogue = free_port(), free_port()
    plan = StackPlan(
        edge_port=free_port(),
        router_port=free_port(),
        engine_ports=[good, rogue],
        engine_args=scripted_args(),
        per_engine_args=[[], ["--tls-dir", str(stranger / "engine")]],
        model_ids=[SCRIPTED_MODEL],
        log_dir=tmp_path / "logs",
        tls_dir=certs,
    )
    stack = Stack(plan)
    try:
        for port, extra in zip(plan.engine_ports, plan.per_engine_args, strict=True):
            stack.start_engine(port, extra)
        stack._start_router()
        router, as_edge = f"127.0.0.1:{plan.router_port}", client_tls(certs / "edge")
        rogue_address = f"127.0.0.1:{rogue}"
        wait_until(
            lambda: grpc_serving(rogue_address, tls=client_tls(stranger / "router")),
            timeout_s=60,
            watch=stack.processes,
            what="the rogue engine to serve",
        )
        wait_until(
            lambda: router_has_replicas(router, 1, tls=as_edge),
            timeout_s=60,
            watch=stack.processes,
            what="the good engine in rotation",
        )
        deadline = time.monotonic() + 4  # several health-check rounds
        while time.monotonic() < deadline:
            assert not router_has_replicas(router, 2, tls=as_edge), "the rogue got in"
            time.sleep(0.5)
    finally:
        stack.stop()


def test_probe_port_tells_health_and_nothing_else(
    scripted_stack: Callable[..., RunningStack], certs: Path
) -> None:
    port = free_port()
    stack = scripted_stack(tls_dir=certs, router_args=["--health-port", str(port)])
    probe = f"127.0.0.1:{port}"
    assert grpc_serving(probe), "the kubelet's plaintext gRPC probe"
    with grpc.insecure_channel(probe) as channel:
        assert _list_models(probe, channel) == grpc.StatusCode.UNIMPLEMENTED
    assert stack.stack.router is not None and stack.stack.router.alive()


def test_servers_pick_up_renewed_certificates(tmp_path: Path) -> None:
    from services.common.tls import _Reloading

    folder = issue(new_authority(), "router", tmp_path / "router")
    reloading = _Reloading(client_tls(folder))  # type: ignore[arg-type]
    assert reloading() is None, "unchanged files: the current configuration stays"
    time.sleep(0.01)
    issue(new_authority(), "router", folder)  # cert-manager renews the Secret
    assert reloading() is not None
    assert reloading() is None


async def test_tera_run_uses_mutual_tls_by_default(tmp_path: Path) -> None:
    from tests.devstack.cli import tera_run

    cache = tmp_path / "cache"
    with tera_run(tmp_path, {}, plaintext=False, args=["--cache-dir", str(cache)]) as run:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{run.base_url}/chat/completions", json=CHAT) as r,
        ):
            assert r.status == 200, await r.text()
        with grpc.insecure_channel(run.router) as channel:
            assert _list_models(run.router, channel) == grpc.StatusCode.UNAVAILABLE
        with sync_channel(run.router, client_tls(cache / "tls" / "edge")) as channel:
            assert _list_models(run.router, channel) == grpc.StatusCode.OK
    assert oct((cache / "tls" / "ca.key").stat().st_mode & 0o777) == "0o600"


async def test_real_vllm_behind_mutual_tls(vllm_mtls_stack: RunningStack) -> None:
    from services.engine.model_prep import DEFAULT_MODEL_ID

    body = {**CHAT, "model": DEFAULT_MODEL_ID}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{vllm_mtls_stack.base_url}/chat/completions", json=body) as r,
    ):
        assert r.status == 200, await r.text()
        assert (await r.json())["choices"][0]["message"]["content"]
    engine = vllm_mtls_stack.engine_addresses[0]
    with grpc.insecure_channel(engine) as channel:
        assert _list_models(engine, channel) == grpc.StatusCode.UNAVAILABLE
    assert vllm_mtls_stack.engine_load().in_flight == 0  # the router's certificate works


def _stream_answers(host: str, port: int, context: ssl.SSLContext | None) -> bool:
    """Whether a GenerateMux stream link at host:port, opened with `context`'s
    credentials (None: plaintext), answers a Generate stream with tokens."""
    request = pb.GenerateRequest(
        prompt=pb.PromptInput(text="hi"), sampling=pb.SamplingParams(max_tokens=2)
    )
    opened = pb.MuxOpen(method=GENERATE, request=request.SerializeToString())
    opened.metadata.add(key="tera-model", value=SCRIPTED_MODEL.encode())
    data = pb.MuxFrames(frames=[pb.MuxFrame(stream_id=1, open=opened)]).SerializeToString()
    try:
        with socket.create_connection((host, port), timeout=5) as raw:
            sock = context.wrap_socket(raw, server_hostname=host) if context else raw
            sock.sendall(struct.pack(">I", len(data)) + data)
            header = sock.recv(4)
            if len(header) < 4:
                return False
            message = pb.MuxFrames.FromString(sock.recv(struct.unpack(">I", header)[0]))
    except (OSError, ssl.SSLError):
        return False
    return any(f.HasField("message") for f in message.frames)


def _context(folder: Path, ca: Path | None = None, *, with_cert: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca or folder / "ca.crt"))
    if with_cert:
        context.load_cert_chain(str(folder / "tls.crt"), str(folder / "tls.key"))
    return context


async def test_stream_links_take_the_same_certificates_as_grpc(
    scripted_stack: Callable[..., RunningStack], certs: Path, stranger: Path
) -> None:
    """Both hops on stream links (transport stream) under mutual TLS: the edge's and
    router's links work, and the router's listener answers only a client certificate
    from its CA."""
    listener = ["--mux-stream-port", "0"]
    stack = scripted_stack(
        tls_dir=certs,
        per_engine_args=[listener],
        router_args=[*listener, "--engine-transport", "stream"],
        edge_args=["--router-transport", "stream"],
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{stack.base_url}/chat/completions", json=CHAT) as r,
    ):
        assert r.status == 200, await r.text()
    for name in ("edge", "router"):
        log = (stack.stack.plan.log_dir / f"{name}.log").read_text()  # type: ignore[operator]
        assert "opening a multiplexed stream link" in log, name
    router = f"127.0.0.1:{stack.stack.plan.router_port}"
    with sync_channel(router, client_tls(certs / "edge")) as channel:
        port = pb_grpc.EngineStub(channel).GetLoad(pb.GetLoadRequest(), timeout=5).mux_stream_port
    assert port, "the router advertises its stream listener"
    edge = certs / "edge"
    assert _stream_answers("127.0.0.1", port, _context(edge)), "the edge's certificate"
    assert not _stream_answers("127.0.0.1", port, None), "plaintext"
    assert not _stream_answers("127.0.0.1", port, _context(edge, with_cert=False)), "no cert"
    foreign = _context(stranger / "edge", ca=edge / "ca.crt")  # trusts the router
    assert not _stream_answers("127.0.0.1", port, foreign), "another CA"


def test_stream_listeners_pick_up_renewed_certificates(tmp_path: Path) -> None:
    from services.common.mux_stream import _ReloadingServerContext

    folder = issue(new_authority(), "router", tmp_path / "router")
    reloading = _ReloadingServerContext(client_tls(folder))  # type: ignore[arg-type]
    handshake = SimpleNamespace(context=None)
    reloading._handshake(handshake, None, None)  # type: ignore[arg-type]
    first = handshake.context
    assert first is not None
    reloading._handshake(handshake, None, None)  # type: ignore[arg-type]
    assert handshake.context is first, "unchanged files: the current context stays"
    time.sleep(0.01)
    issue(new_authority(), "router", folder)  # cert-manager renews the Secret
    reloading._handshake(handshake, None, None)  # type: ignore[arg-type]
    assert handshake.context is not first, "the next handshake uses the new certificate"
