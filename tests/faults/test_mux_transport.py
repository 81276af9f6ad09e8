"""The router's mux transport (engine_transport: mux) with real processes: stand-in
engines behind edge and router, each replica's Generate streams over one GenerateMux call.

Answers are checked against the stand-in itself, unfailed and in process (test_resume.py's
reference, which the per_call transport is held to as well).
"""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import grpc
import pytest

from services.common.mux import GENERATE, GENERATE_MUX
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc
from tests.conftest import SCRIPTED_MODEL, RunningStack
from tests.faults.fleet import router_metric
from tests.faults.test_resume import UTF8, reference, stream


@pytest.fixture
def engine_transport() -> str:
    return "mux"


def mux_calls_opened(stack: RunningStack) -> int:
    """Multiplexed calls or stream links the router opened (it logs each)."""
    log = stack.stack.plan.log_dir / "router.log"  # type: ignore[operator]
    return log.read_text().count("opening a multiplexed ")


async def engine_idle(stack: RunningStack, index: int, within_s: float) -> bool:
    """Whether the engine has no call in flight within `within_s`."""
    deadline = time.monotonic() + within_s
    while (await asyncio.to_thread(stack.engine_load, index)).in_flight:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_concurrent_streams_equal_the_unfailed_answer(fleet) -> None:
    behaviour = {**UTF8, "tokens_per_second": 100}
    stack = fleet([behaviour, behaviour])
    bodies = [{"max_tokens": 10 + i, "n": 1 + i % 2} for i in range(8)]
    got = await asyncio.gather(*(stream(stack.base_url, body) for body in bodies))
    for body, result in zip(bodies, got, strict=True):
        want = await reference(behaviour, body)
        assert result["error"] is None, result["error"]
        assert result["texts"] == want["texts"]
        assert result["finish"] == want["finish"]
        assert result["usage"] == want["usage"]
    assert mux_calls_opened(stack) == 2  # one per replica carried all eight streams


async def test_a_cancelled_stream_is_aborted_in_the_engine(fleet) -> None:
    stack = fleet([{"tokens_per_second": 20}])
    body = {"model": SCRIPTED_MODEL, "messages": [{"role": "user", "content": "Hi"}]}
    body |= {"max_tokens": 200, "stream": True}  # 10 s of tokens
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{stack.base_url}/chat/completions", json=body) as response,
    ):
        async for line in response.content:
            if b'"content":"tok' in line:
                break
        assert (await asyncio.to_thread(stack.engine_load, 0)).in_flight == 1
    # The client left: the edge cancels, the router sends a cancel frame, the engine aborts.
    assert await engine_idle(stack, 0, within_s=4.0), "the engine still runs the stream"
    assert mux_calls_opened(stack) == 1


async def test_streams_cut_by_a_sigkill_resume_token_exactly(fleet) -> None:
    behaviour = {**UTF8, "tokens_per_second": 20}
    stack = fleet([behaviour, behaviour])
    body = {"max_tokens": 40}  # 2 s per stream
    streams = [asyncio.create_task(stream(stack.base_url, body)) for _ in range(6)]
    await asyncio.sleep(0.8)  # round robin: both replicas hold streams with tokens out
    assert (await asyncio.to_thread(stack.engine_load, 0)).in_flight >= 1
    stack.stack.engines[0].kill_group(signal.SIGKILL)
    got, want = await asyncio.gather(*streams), await reference(behaviour, body)
    for result in got:
        assert result["error"] is None, result["error"]
        assert (result["texts"], result["finish"], result["usage"]) == (
            want["texts"],
            want["finish"],
            want["usage"],
        )
    assert router_metric(stack, "tera_router_resumes_total", reason="unavailable") >= 1


async def test_a_deadline_ends_the_stream_and_its_engine_request(fleet) -> None:
    stack = fleet([{"tokens_per_second": 10}])
    plan = stack.stack.plan
    request = pb.GenerateRequest(
        prompt=pb.PromptInput(text="hello"), sampling=pb.SamplingParams(max_tokens=100)
    )
    ids: list[int] = []
    async with grpc.aio.insecure_channel(f"{plan.host}:{plan.router_port}") as channel:
        call = pb_grpc.EngineStub(channel).Generate(
            request, metadata=[("tera-model", SCRIPTED_MODEL)], timeout=1.5
        )
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            async for message in call:
                ids += [i for c in message.choices for i in c.token_ids]
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0 < len(ids) < 100
    assert await engine_idle(stack, 0, within_s=3.0), "the engine still runs the stream"
    assert mux_calls_opened(stack) == 1


async def raw_mux(address: str, opens: list[pb.MuxOpen]) -> list[pb.MuxFrames]:
    """Every message the engine sends on one GenerateMux call, opened with these streams
    (ids 1, 2, ...), until each has ended."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream(
            GENERATE_MUX,
            request_serializer=pb.MuxFrames.SerializeToString,
            response_deserializer=pb.MuxFrames.FromString,
        )()
        frames = [pb.MuxFrame(stream_id=i, open=o) for i, o in enumerate(opens, 1)]
        await call.write(pb.MuxFrames(frames=frames))
        messages: list[pb.MuxFrames] = []
        ended: set[int] = set()
        while len(ended) < len(opens):
            messages.append(message := await call.read())
            ended |= {f.stream_id for f in message.frames if f.HasField("end")}
        call.cancel()
    return messages


def generate(max_tokens: int, timeout_s: float | None = None) -> pb.MuxOpen:
    request = pb.GenerateRequest(
        model=SCRIPTED_MODEL,
        prompt=pb.PromptInput(text="hello"),
        sampling=pb.SamplingParams(max_tokens=max_tokens),
    )
    opened = pb.MuxOpen(method=GENERATE, request=request.SerializeToString())
    if timeout_s is not None:
        opened.timeout_s = timeout_s
    return opened


async def test_the_engine_batches_the_frames_of_concurrent_streams(fleet) -> None:
    stack = fleet([{"tokens_per_second": 100}])
    messages = await raw_mux(stack.engine_addresses[0], [generate(20) for _ in range(16)])
    ids: dict[int, list[int]] = {}
    ends: dict[int, int] = {}
    for frame in (f for m in messages for f in m.frames):
        if frame.HasField("end"):
            ends[frame.stream_id] = frame.end.code
        else:
            response = pb.GenerateResponse.FromString(frame.message)
            ids.setdefault(frame.stream_id, []).extend(
                i for c in response.choices for i in c.token_ids
            )
    assert ends == dict.fromkeys(range(1, 17), grpc.StatusCode.OK.value[0])
    assert ids == {s: list(range(20)) for s in range(1, 17)}
    # The saving: one message carries the deltas of several streams.
    assert max(len({f.stream_id for f in m.frames}) for m in messages) >= 4


async def test_the_engine_keeps_a_multiplexed_streams_deadline(fleet) -> None:
    stack = fleet([{"tokens_per_second": 10}])
    messages = await raw_mux(stack.engine_addresses[0], [generate(100, timeout_s=1.0)])
    end = messages[-1].frames[-1].end
    assert end.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert sum(f.HasField("message") for m in messages for f in m.frames) >= 1
    assert await engine_idle(stack, 0, within_s=3.0)


async def test_a_reused_stream_id_is_refused_and_the_live_stream_runs_on(fleet) -> None:
    stack = fleet([{"tokens_per_second": 20}])
    async with grpc.aio.insecure_channel(stack.engine_addresses[0]) as channel:
        call = channel.stream_stream(
            GENERATE_MUX,
            request_serializer=pb.MuxFrames.SerializeToString,
            response_deserializer=pb.MuxFrames.FromString,
        )()
        await call.write(pb.MuxFrames(frames=[pb.MuxFrame(stream_id=1, open=generate(20))]))
        frames = list((await call.read()).frames)  # stream 1 is live: its first tokens
        await call.write(pb.MuxFrames(frames=[pb.MuxFrame(stream_id=1, open=generate(5))]))
        while not any(f.HasField("end") and f.end.code == 0 for f in frames):
            frames += (await call.read()).frames
        call.cancel()
    ends = [(f.end.code, f.end.details) for f in frames if f.HasField("end")]
    assert ends == [(grpc.StatusCode.INVALID_ARGUMENT.value[0], "stream id 1 is in use"), (0, "")]
    responses = [pb.GenerateResponse.FromString(f.message) for f in frames if f.HasField("message")]
    # Only the first open's 20 tokens, in order: the second never ran beside it.
    assert [i for r in responses for c in r.choices for i in c.token_ids] == list(range(20))
