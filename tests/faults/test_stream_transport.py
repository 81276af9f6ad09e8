"""Both hops on stream links (router_transport and engine_transport: stream): each
GenerateMux link is a TCP connection to the peer's stream listener, not a gRPC call.

test_mux_transport.py's end-to-end tests run here too (imported): answers equal to the
unfailed stand-in's, cancels and deadlines that reach the engine, SIGKILLed replicas
resumed token-exactly. The tests below check the links themselves: that they carry the
streams, and that a peer which breaks the framing loses only its own link.
"""

from __future__ import annotations

import asyncio
import struct

import grpc
import pytest

from services.common.mux_stream import MAX_MESSAGE_BYTES
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc
from tests.conftest import SCRIPTED_MODEL, RunningStack
from tests.faults.test_mux_transport import (  # noqa: F401 (collected here, over stream links)
    generate,
    test_a_cancelled_stream_is_aborted_in_the_engine,
    test_a_deadline_ends_the_stream_and_its_engine_request,
    test_concurrent_streams_equal_the_unfailed_answer,
    test_streams_cut_by_a_sigkill_resume_token_exactly,
)
from tests.faults.test_resume import stream


@pytest.fixture
def engine_transport() -> str:
    return "stream"


@pytest.fixture
def router_transport() -> str:
    return "stream"


def _log(stack: RunningStack, name: str) -> str:
    return (stack.stack.plan.log_dir / f"{name}.log").read_text()  # type: ignore[operator]


async def _stream_port(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        load = await pb_grpc.EngineStub(channel).GetLoad(pb.GetLoadRequest(), timeout=5)
    return load.mux_stream_port


def _framed(message: pb.MuxFrames) -> bytes:
    data = message.SerializeToString()
    return struct.pack(">I", len(data)) + data


async def _read_until_ended(reader: asyncio.StreamReader) -> list[pb.MuxFrame]:
    frames: list[pb.MuxFrame] = []
    while not any(f.HasField("end") for f in frames):
        (size,) = struct.unpack(">I", await reader.readexactly(4))
        frames += pb.MuxFrames.FromString(await reader.readexactly(size)).frames
    return frames


async def test_both_hops_carry_their_streams_on_stream_links(fleet) -> None:
    stack = fleet([{"tokens_per_second": 100}])
    result = await stream(stack.base_url, {"max_tokens": 5})
    assert result["error"] is None, result["error"]
    for name in ("edge", "router"):
        log = _log(stack, name)
        assert log.count("opening a multiplexed stream link") == 1, name
        assert "opening a multiplexed call" not in log, name


async def test_a_message_sent_in_pieces_is_read_whole(fleet) -> None:
    stack = fleet([{"tokens_per_second": 100}])
    address = stack.engine_addresses[0]
    port = await _stream_port(address)
    assert port, "the engine advertises its stream listener"
    opened = generate(4)
    opened.metadata.add(key="tera-model", value=SCRIPTED_MODEL.encode())
    data = _framed(pb.MuxFrames(frames=[pb.MuxFrame(stream_id=1, open=opened)]))
    reader, writer = await asyncio.open_connection(address.rsplit(":", 1)[0], port)
    try:
        for i in range(len(data)):  # one byte a write: the listener reassembles them
            writer.write(data[i : i + 1])
            await writer.drain()
        async with asyncio.timeout(10):
            frames = await _read_until_ended(reader)
    finally:
        writer.close()
    responses = [pb.GenerateResponse.FromString(f.message) for f in frames if f.HasField("message")]
    assert [i for r in responses for c in r.choices for i in c.token_ids] == list(range(4))
    assert frames[-1].end.code == grpc.StatusCode.OK.value[0]


async def test_a_peer_that_breaks_the_framing_loses_only_its_link(fleet) -> None:
    stack = fleet([{"tokens_per_second": 100}])
    address = stack.engine_addresses[0]
    port = await _stream_port(address)
    reader, writer = await asyncio.open_connection(address.rsplit(":", 1)[0], port)
    writer.write(struct.pack(">I", MAX_MESSAGE_BYTES + 1))
    async with asyncio.timeout(10):
        assert await reader.read() == b"", "the engine closes the link"
    writer.close()
    # The router's own link to the same listener serves on.
    result = await stream(stack.base_url, {"max_tokens": 3})
    assert result["error"] is None, result["error"]
    assert "unreadable message" in _log(stack, f"engine-{address.rsplit(':', 1)[1]}")
