"""The outbox written through (stream links): a decode step's frames still go in one
message, a frame a stream waits on (its open, its first message) leaves at once, a
backed-up socket holds them in order, and closing waits for what is queued."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.common.mux import GENERATE, Outbox
from services.common.mux_server import MuxServer
from services.common.mux_stream import _LENGTH, FrameProtocol
from services.proto_gen.tera.v1 import engine_pb2 as pb


class _Transport(asyncio.Transport):
    """Records what the protocol writes."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written.append(data)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def messages(self) -> list[list[tuple[int, bytes]]]:
        """Each written MuxFrames as (stream id, message) pairs."""
        out = []
        for data in self.written:
            (size,) = _LENGTH.unpack_from(data)
            frames = pb.MuxFrames.FromString(data[_LENGTH.size : _LENGTH.size + size]).frames
            out.append([(f.stream_id, f.message) for f in frames])
        return out


async def _link(
    outbox: Outbox | None = None,
) -> tuple[FrameProtocol, _Transport, Outbox, asyncio.Task[None]]:
    """A frame protocol on a recording transport, writing `outbox` (a fresh one if None)."""
    protocol = FrameProtocol(lambda _: None)
    transport = _Transport()
    protocol.connection_made(transport)
    outbox = Outbox() if outbox is None else outbox
    writer = asyncio.create_task(protocol.send_all(outbox))
    await asyncio.sleep(0)
    return protocol, transport, outbox, writer


async def _turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_steps_frames_go_in_one_message() -> None:
    _, transport, outbox, writer = await _link()
    for stream in (1, 2, 3):
        outbox.put(stream, message=b"t%d" % stream)
    await _turns()
    outbox.put(1, message=b"next")
    await _turns()
    assert transport.messages() == [[(1, b"t1"), (2, b"t2"), (3, b"t3")], [(1, b"next")]]
    writer.cancel()


@pytest.mark.parametrize("put", ["put", "put_at_once"])
async def test_a_backed_up_socket_holds_the_frames_in_order_until_it_drains(put: str) -> None:
    protocol, transport, outbox, writer = await _link()
    protocol.pause_writing()
    getattr(outbox, put)(1, message=b"a")
    await _turns()
    getattr(outbox, put)(2, message=b"b")
    await _turns()
    assert transport.written == [], "written past the transport's high-water mark"
    protocol.resume_writing()
    await _turns()
    assert transport.messages() == [[(1, b"a"), (2, b"b")]]
    writer.cancel()


async def test_closing_returns_once_what_is_queued_is_written() -> None:
    protocol, transport, outbox, writer = await _link()
    protocol.pause_writing()
    outbox.put(1, end=pb.MuxEnd())
    outbox.close()
    await _turns()
    assert not writer.done(), "returned with a frame still queued"
    protocol.resume_writing()
    await asyncio.wait_for(writer, 1)
    assert len(transport.messages()) == 1


async def test_a_frame_a_stream_waits_on_leaves_a_quiet_outbox_at_once() -> None:
    _, transport, outbox, writer = await _link()
    await _turns()  # the link's first write (of what was queued before it) is done
    outbox.put_at_once(1, message=b"first")
    assert transport.messages() == [[(1, b"first")]], "left for the end of the loop's turn"
    # The rest of the turn's frames, at once or not, still share the turn's one message.
    outbox.put_at_once(2, message=b"a")
    outbox.put(3, message=b"b")
    assert len(transport.written) == 1
    await _turns()
    assert transport.messages() == [[(1, b"first")], [(2, b"a"), (3, b"b")]]
    writer.cancel()


class _Peer:
    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}


async def test_a_streams_first_message_is_written_as_it_is_yielded_and_the_rest_per_turn() -> None:
    written_at_yield: list[int] = []

    async def handler(request: bytes, context: object) -> AsyncIterator[bytes]:
        for message in (b"first", b"second", b"third"):
            yield message
            written_at_yield.append(len(transport.written))  # resumed in the same turn

    server = MuxServer({GENERATE: handler}, _Peer(), tracer="test")
    _, transport, _, writer = await _link(server.outbox)
    opened = pb.MuxOpen(method=GENERATE, request=b"")
    server.received(pb.MuxFrames(frames=[pb.MuxFrame(stream_id=1, open=opened)]))
    await _turns()
    assert written_at_yield == [1, 1, 1]
    assert transport.messages() == [[(1, b"first")], [(1, b"second"), (1, b"third"), (1, b"")]]
    writer.cancel()
