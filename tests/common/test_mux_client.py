"""The router's end of GenerateMux against a real stand-in engine, over the gRPC call and
over the engine's stream listener: each stream behaves as the grpc.aio.UnaryStreamCall
that relay, resume and preemption code read and cancel."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from devstack.certs import ensure_local_certs
from devstack.processes import ManagedProcess, free_port, wait_until
from devstack.readiness import client_tls, grpc_serving
from services.common.mux import GENERATE, Outbox, to_pairs
from services.common.mux_client import MuxCall, MuxChannel, StreamTransport
from services.common.mux_server import MuxContext
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc
from tests.conftest import SCRIPTED_MODEL
from tests.faults.gateway import stand_in

HEADERS = (("tera-model", SCRIPTED_MODEL),)


@pytest.fixture
def stream_port() -> int:
    return free_port()


@pytest.fixture
def engine(tmp_path: Path, stream_port: int) -> Iterator[tuple[ManagedProcess, str]]:
    """A stand-in engine at 20 tokens/s with a stream listener, and its gRPC address."""
    port = free_port()
    process = stand_in(tmp_path, port, args=_listening(stream_port), tokens_per_second=20)
    address = f"127.0.0.1:{port}"
    try:
        wait_until(lambda: grpc_serving(address), timeout_s=60, watch=[process], what="engine")
        yield process, address
    finally:
        process.stop()


@pytest.fixture(params=["mux", "stream"])
def transport(request: pytest.FixtureRequest) -> StreamTransport | None:
    """The multiplexed call over gRPC, or over the engine's stream listener."""
    return StreamTransport(tls=None) if request.param == "stream" else None


def _listening(stream_port: int) -> list[str]:
    return ["--mux-stream-port", str(stream_port)]


async def _link_is(mux: MuxChannel, transport: StreamTransport | None, stream_port: int) -> None:
    """The link the first stream opened goes where `transport` says it should."""
    link = mux._link
    assert link is not None
    async with asyncio.timeout(5):
        while link.stream_port is None:
            await asyncio.sleep(0.01)
    assert link.stream_port == (stream_port if transport is not None else 0)


def open_stream(mux: MuxChannel, max_tokens: int) -> MuxCall:
    request = pb.GenerateRequest(
        prompt=pb.PromptInput(text="hello"), sampling=pb.SamplingParams(max_tokens=max_tokens)
    )
    return mux.unary_stream(GENERATE)(request.SerializeToString(), metadata=HEADERS, timeout=30)


async def in_flight(channel: grpc.aio.Channel) -> int:
    load = await pb_grpc.EngineStub(channel).GetLoad(pb.GetLoadRequest(), timeout=5)
    return load.in_flight


async def test_cancel_fails_a_pending_read_and_aborts_the_request(
    engine, transport: StreamTransport | None, stream_port: int
) -> None:
    _, address = engine
    async with grpc.aio.insecure_channel(address) as channel:
        mux = MuxChannel(lambda: channel, address, transport)
        call = open_stream(mux, max_tokens=200)  # 10 s of tokens
        assert isinstance(await call.read(), bytes)
        await _link_is(mux, transport, stream_port)
        pending = asyncio.create_task(call.read())
        await asyncio.sleep(0.01)  # the read waits for the next token (50 ms away)
        assert call.cancel()
        with pytest.raises(asyncio.CancelledError):  # preempt.py relies on this
            await pending
        assert await call.code() == grpc.StatusCode.CANCELLED
        deadline = time.monotonic() + 3
        while await in_flight(channel) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await in_flight(channel) == 0, "the engine still runs the cancelled stream"
        finished = open_stream(mux, max_tokens=3)  # the multiplexed call lives on
        messages = 0
        while await finished.read() is not grpc.aio.EOF:
            messages += 1
        assert messages >= 1 and await finished.code() == grpc.StatusCode.OK
        mux.close()


async def test_an_open_leaves_a_quiet_stream_link_at_once(engine, stream_port: int) -> None:
    """The engine's stand-in answers it as it would anyway; what this guards is that the
    open was not left for the end of the loop's turn (mux.py, Outbox.put_at_once)."""
    _, address = engine
    transport = StreamTransport(tls=None)
    async with grpc.aio.insecure_channel(address) as channel:
        mux = MuxChannel(lambda: channel, address, transport)
        first = open_stream(mux, max_tokens=1)
        while await first.read() is not grpc.aio.EOF:
            pass
        await _link_is(mux, transport, stream_port)
        await asyncio.sleep(0.05)  # the link is quiet
        second = open_stream(mux, max_tokens=1)
        assert mux._link is not None
        assert mux._link._outbox.pending == 0, "the open waits for the end of the turn"
        assert isinstance(await second.read(), bytes)
        mux.close()


async def test_a_lost_engine_fails_its_streams_unavailable(
    engine, tmp_path: Path, transport: StreamTransport | None, stream_port: int
) -> None:
    process, address = engine
    async with grpc.aio.insecure_channel(address) as channel:
        mux = MuxChannel(lambda: channel, address, transport)
        calls = [open_stream(mux, max_tokens=200) for _ in range(3)]
        for call in calls:
            assert isinstance(await call.read(), bytes)
        await _link_is(mux, transport, stream_port)
        process.kill_group(signal.SIGKILL)
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as lost:
                while await call.read() is not grpc.aio.EOF:
                    pass
            assert lost.value.code() == grpc.StatusCode.UNAVAILABLE
        # The next stream opens a new multiplexed call, to the engine back on its port.
        port = int(address.rsplit(":", 1)[1])
        again = stand_in(tmp_path, port, args=_listening(stream_port), tokens_per_second=200)
        try:
            wait_until(lambda: grpc_serving(address), timeout_s=60, watch=[again], what="engine")
            await asyncio.wait_for(channel.channel_ready(), 10)  # past its reconnect backoff
            call = open_stream(mux, max_tokens=3)
            async with asyncio.timeout(10):  # on the broken call it would never end
                while await call.read() is not grpc.aio.EOF:
                    pass
            assert await call.code() == grpc.StatusCode.OK
            await _link_is(mux, transport, stream_port)
        finally:
            mux.close()
            again.stop()


class _QuietLink:
    """A link that is never told anything: the stream below is fed by hand."""

    def cancel(self, stream_id: int) -> None:
        pass

    def forget(self, stream_id: int) -> None:
        pass


async def test_a_forwarding_read_returns_what_it_refuses_and_what_follows_waits_behind() -> None:
    call = MuxCall(_QuietLink(), 1, None, None)  # type: ignore[arg-type]
    taken: list[bytes] = []

    def forward(message: bytes) -> bool:  # the router's: all but the one with the usage
        if message == b"m1":
            return False
        taken.append(message)
        return True

    reading = asyncio.create_task(call.read(forward))
    await asyncio.sleep(0)  # the read is waiting
    for i in range(3):  # one message of the link's, with three frames of the stream
        call.received(pb.MuxFrame(stream_id=1, message=f"m{i}".encode()))
    assert await reading == b"m1"
    # m2 came after the refused m1: forwarded before the reader had m1, it would have
    # overtaken m1 on its way to the caller.
    assert taken == [b"m0"]
    assert await call.read() == b"m2"


async def test_an_unreachable_stream_listener_leaves_the_link_on_grpc(
    engine, tmp_path: Path, stream_port: int
) -> None:
    """A listener the client cannot talk to (here: TLS offered to a plaintext one, as a
    misconfigured certificate or network policy would do) costs a warning, not the
    streams: the link opens a GenerateMux call instead."""
    _, address = engine
    tls = client_tls(ensure_local_certs(tmp_path / "tls") / "router")
    async with grpc.aio.insecure_channel(address) as channel:
        mux = MuxChannel(lambda: channel, address, StreamTransport(tls=tls))
        call = open_stream(mux, max_tokens=3)
        async with asyncio.timeout(15):
            while await call.read() is not grpc.aio.EOF:
                pass
        assert await call.code() == grpc.StatusCode.OK
        await _link_is(mux, None, stream_port)
        mux.close()


async def test_a_link_closed_before_it_ran_ends_its_streams(engine) -> None:
    _, address = engine
    async with grpc.aio.insecure_channel(address) as channel:
        mux = MuxChannel(lambda: channel, address, StreamTransport(tls=None))
        call = open_stream(mux, max_tokens=3)
        mux.close()  # in the same loop turn: the link's task never started
        with pytest.raises(grpc.aio.AioRpcError) as lost:
            async with asyncio.timeout(5):
                await call.read()
        assert lost.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("takes_them", [True, False])
async def test_a_keepalive_reaches_a_caller_that_takes_them_and_is_never_a_message(
    takes_them: bool,
) -> None:
    metadata = (("tera-keepalive", "1"),) if takes_them else ()
    opened = pb.MuxOpen(method=GENERATE, metadata=to_pairs(metadata))
    outbox = Outbox()
    context = MuxContext(opened, None, outbox, 1)  # type: ignore[arg-type]
    context.keepalive()  # the router waits on a replica for the caller
    context.send_now(b"m0")
    batch = await anext(outbox.batches())
    kinds = [frame.WhichOneof("kind") for frame in batch.frames]
    # An older edge would take a keepalive frame for an empty message: it gets none.
    assert kinds == (["keepalive", "message"] if takes_them else ["message"])

    call = MuxCall(_QuietLink(), 1, None, None)  # type: ignore[arg-type]
    heard: list[None] = []
    call.on_keepalive(lambda: heard.append(None))
    for frame in batch.frames:
        call.received(frame)
    assert len(heard) == int(takes_them)
    assert await call.read() == b"m0"
