"""A stream listener of this process is joined in memory (services/common/mux_stream.py,
`connect`): frames go both ways as over a socket, with none opened; closing and aborting
end the link at both ends as a connection's close and reset do; a stopped listener, or
one whose TLS handshake would fail, is reached over TCP as before; one under mutual TLS
sees the names the handshake would have given it."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from devstack.certs import ensure_local_certs
from devstack.readiness import client_tls
from services.common import mux_stream, tls_handshake
from services.common.mux import GENERATE
from services.proto_gen.tera.v1 import engine_pb2 as pb

HOST = "127.0.0.1"


async def _echo(request: bytes, context: object) -> AsyncIterator[bytes]:
    for part in (b"re:", request):
        yield part


class _Received:
    def __init__(self) -> None:
        self.frames: list[pb.MuxFrame] = []
        self.changed = asyncio.Event()

    def __call__(self, message: pb.MuxFrames) -> None:
        self.frames.extend(message.frames)
        self.changed.set()

    async def until_ended(self, stream_id: int) -> list[pb.MuxFrame]:
        async def ended() -> None:
            while not any(f.stream_id == stream_id and f.HasField("end") for f in self.frames):
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(ended(), 5)
        return [f for f in self.frames if f.stream_id == stream_id]


@pytest.fixture
async def listener() -> AsyncIterator[mux_stream.StreamListener]:
    served = await mux_stream.start_listener({GENERATE: _echo}, HOST, 0, None, tracer="test")
    assert served is not None
    yield served
    await served.stop(grace=None)


def _open(link: mux_stream.FrameProtocol, stream_id: int, request: bytes) -> None:
    opened = pb.MuxOpen(method=GENERATE, request=request)
    link.send(pb.MuxFrames(frames=[pb.MuxFrame(stream_id=stream_id, open=opened)]))


async def test_a_listener_of_this_process_is_joined_in_memory(listener) -> None:
    received = _Received()
    link = await mux_stream.connect(HOST, listener.port, None, received)
    assert link.transport is not None
    assert link.transport.get_extra_info("socket") is None, "a socket was opened"
    _open(link, 1, b"one")
    _open(link, 3, b"two")
    first, third = await received.until_ended(1), await received.until_ended(3)
    assert [f.message for f in first if f.HasField("message")] == [b"re:", b"one"]
    assert [f.message for f in third if f.HasField("message")] == [b"re:", b"two"]
    assert first[-1].end.code == 0
    link.close()
    assert await asyncio.wait_for(link.closed, 5) == "connection closed"


async def test_the_served_side_takes_the_link_as_from_loopback(listener) -> None:
    link = await mux_stream.connect(HOST, listener.port, None, _Received())
    await asyncio.sleep(0)
    (served,) = listener.connections
    assert served._mux is not None
    assert served._mux._call.peer() == f"ipv4:{HOST}:0"  # what a guard reads, as over TCP
    assert served._mux._call.auth_context() == {}
    link.close()


async def test_aborting_either_end_ends_the_link_at_both(listener) -> None:
    link = await mux_stream.connect(HOST, listener.port, None, _Received())
    await asyncio.sleep(0)
    (served,) = listener.connections
    served._fail("a broken peer")  # what an unreadable message does
    assert "reset" in (await asyncio.wait_for(link.closed, 5)).lower()
    await asyncio.sleep(0.01)
    assert not listener.connections, "the served side still holds the link"


async def test_closing_the_client_ends_the_link_at_both(listener) -> None:
    link = await mux_stream.connect(HOST, listener.port, None, _Received())
    _open(link, 1, b"late")
    link.close()  # end of file after the open: the served side finishes, then closes
    await asyncio.sleep(0.05)
    assert not listener.connections, "the served side still holds the link"
    assert await asyncio.wait_for(link.closed, 5) == "connection closed"


async def test_a_stopped_listener_is_not_joined() -> None:
    served = await mux_stream.start_listener({GENERATE: _echo}, HOST, 0, None, tracer="test")
    assert served is not None
    port = served.port
    await served.stop(grace=None)
    with pytest.raises(OSError):  # TCP: nothing listens there any more
        await mux_stream.connect(HOST, port, None, _Received())


async def test_under_mutual_tls_the_joined_link_carries_the_handshakes_names(
    tmp_path: Path,
) -> None:
    certs = ensure_local_certs(tmp_path / "tls")
    server, client = client_tls(certs / "router"), client_tls(certs / "edge")
    assert server is not None and client is not None
    served = await mux_stream.start_listener({GENERATE: _echo}, HOST, 0, server, tracer="test")
    assert served is not None
    try:
        joined = await mux_stream.connect(HOST, served.port, client, _Received())
        assert joined.transport is not None
        assert joined.transport.get_extra_info("socket") is None, "a socket was opened"
        # The same client over a real TLS connection, for what its handshake gives.
        _, over_tcp = await asyncio.get_running_loop().create_connection(
            lambda: mux_stream.FrameProtocol(_Received()),
            HOST,
            served.port,
            ssl=mux_stream.client_context(client),
            server_hostname=HOST,
        )
        await asyncio.sleep(0.05)
        names = [c._mux._call.auth_context() for c in served.connections if c._mux]
        assert len(names) == 2 and names[0] == names[1]
        assert names[0]["x509_common_name"], names[0]
        joined.close()
        over_tcp.close()
    finally:
        await served.stop(grace=None)


async def test_a_client_whose_handshake_would_fail_is_not_joined(tmp_path: Path) -> None:
    server = client_tls(ensure_local_certs(tmp_path / "ours") / "router")
    stranger = client_tls(ensure_local_certs(tmp_path / "theirs") / "edge")  # another CA
    served = await mux_stream.start_listener({GENERATE: _echo}, HOST, 0, server, tracer="test")
    assert served is not None
    try:
        assert tls_handshake.handshake_names(server, stranger, HOST) is None
        assert tls_handshake.handshake_names(server, None, HOST) is None
        ours = client_tls(tmp_path / "ours" / "edge")
        assert ours is not None
        assert tls_handshake.handshake_names(server, ours, HOST)  # the names, as it would
        misnamed = ours.model_copy(update={"server_name": "not-the-router"})
        assert tls_handshake.handshake_names(server, misnamed, HOST) is None
        with pytest.raises(ssl.SSLError):  # over TCP: the stranger refuses our certificate
            await mux_stream.connect(HOST, served.port, stranger, _Received())
    finally:
        await served.stop(grace=None)
