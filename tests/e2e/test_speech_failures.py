"""/v1/audio/speech when things go wrong, through edge -> router -> the real Piper
engine: synthesis failing mid-way (raw audio closes without its final chunk; SSE ends
with an error event, never speech.audio.done), a client that goes away (the engine
stops synthesizing), and the engine gone (503)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from devstack.engine_args import SPEECH_MODEL_ID, speech_engine_args
from devstack.processes import free_port
from devstack.stack import Stack, StackPlan
from tests.conftest import RunningStack

STORY = " ".join(
    f"Sentence number {i} tells a little more of the story, slowly and clearly." for i in range(6)
)
LONG_STORY = " ".join([STORY] * 8)


def _speech_stack(logs: Path, speech: dict | None = None) -> Stack:
    args = speech_engine_args()
    if speech:
        config = logs / "engine.yaml"
        config.write_text(yaml.safe_dump({"speech": speech}))
        args = [*args, "--config", str(config)]
    plan = StackPlan(
        edge_port=free_port(),
        router_port=free_port(),
        engine_ports=[free_port()],
        engine_args=args,
        model_ids=[SPEECH_MODEL_ID],
        log_dir=logs,
    )
    return Stack(plan).start(timeout_s=120)


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """Every synthesis fails after two sentences' audio."""
    stack = _speech_stack(tmp_path_factory.mktemp("speech-fails"), {"fail_after_sentences": 2})
    try:
        yield RunningStack(stack)
    finally:
        stack.stop()


@pytest.fixture
def healthy(tmp_path: Path) -> Iterator[RunningStack]:
    stack = _speech_stack(tmp_path)
    try:
        yield RunningStack(stack)
    finally:
        stack.stop()


def _body(text: str, **extra: object) -> dict:
    return {"model": SPEECH_MODEL_ID, "input": text, "voice": "alloy", **extra}


async def test_raw_audio_failing_mid_way_closes_without_the_final_chunk(
    failing: RunningStack,
) -> None:
    received = 0
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{failing.base_url}/audio/speech", json=_body(STORY, response_format="pcm")
        ) as r,
    ):
        assert r.status == 200, "audio had begun"
        with pytest.raises(aiohttp.ClientPayloadError):
            async for chunk in r.content.iter_any():
                received += len(chunk)
    assert received > 0, "two sentences of audio came before the failure"


async def test_sse_failing_mid_way_ends_with_an_error_event(failing: RunningStack) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{failing.base_url}/audio/speech", json=_body(STORY, stream_format="sse")
        ) as r,
    ):
        assert r.status == 200
        raw = (await r.read()).decode()
    events = [json.loads(e.removeprefix("data: ")) for e in raw.split("\n\n") if e.strip()]
    assert [e.get("type") for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert len(events) >= 2, "audio deltas came before the failure"
    error = events[-1]["error"]
    assert error["type"] == "server_error" and "failure after 2 sentences" in error["message"]
    assert all(e.get("type") != "speech.audio.done" for e in events)


async def test_client_disconnect_stops_synthesis(healthy: RunningStack) -> None:
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        response = await session.post(
            f"{healthy.base_url}/audio/speech", json=_body(LONG_STORY, response_format="pcm")
        )
        assert response.status == 200
        await response.content.readany()
        first_audio_s = time.monotonic() - started
        assert (await asyncio.to_thread(healthy.engine_load)).in_flight == 1
        response.close()
        closed = time.monotonic()
    while (
        await asyncio.to_thread(healthy.engine_load)
    ).in_flight and time.monotonic() - closed < 30:
        await asyncio.sleep(0.05)
    freed_s = time.monotonic() - closed
    # 48 sentences take many times the first one's time; a stop lands between sentences.
    assert freed_s < max(3.0, 5 * first_audio_s), (freed_s, first_audio_s)


async def test_engine_down_is_503(healthy: RunningStack) -> None:
    healthy.stack.engines[0].kill_group(signal.SIGKILL)
    await asyncio.sleep(1.0)  # the router's health checks see it gone
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            async with session.post(f"{healthy.base_url}/audio/speech", json=_body("Hello.")) as r:
                status, headers, body = r.status, r.headers, await r.read()
            if status == 503:
                break
            await asyncio.sleep(0.5)
    assert status == 503
    assert json.loads(body)["error"]["code"] == "no_replica"
    assert headers.get("Retry-After")
