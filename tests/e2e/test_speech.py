"""POST /v1/audio/speech through edge -> router -> the real Piper engine."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import av
import openai
import pytest

from devstack.engine_args import SPEECH_MODEL_ID, speech_engine_args
from devstack.processes import free_port
from devstack.stack import Stack, StackPlan
from tests.conftest import RunningStack

SENTENCE = "Hello there. This is a test of the speech endpoint."
STORY = " ".join(
    f"Sentence number {i} tells a little more of the story, slowly and clearly." for i in range(8)
)
FORMATS = ["mp3", "opus", "aac", "flac", "wav", "pcm"]


@pytest.fixture(scope="module")
def speech_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    plan = StackPlan(
        edge_port=free_port(),
        router_port=free_port(),
        engine_ports=[free_port()],
        engine_args=speech_engine_args(),
        model_ids=[SPEECH_MODEL_ID],
        log_dir=tmp_path_factory.mktemp("speech"),
    )
    stack = Stack(plan).start(timeout_s=120)
    try:
        yield RunningStack(stack)
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def client(speech_stack: RunningStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=speech_stack.base_url, api_key="sk-tera-local", max_retries=0)


def _duration(data: bytes, fmt: str) -> float:
    if fmt == "pcm":
        return len(data) / 2 / 24_000
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / stream.rate


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_decodes_to_plausible_audio(client: openai.OpenAI, fmt: str) -> None:
    audio = client.audio.speech.create(
        model=SPEECH_MODEL_ID, voice="alloy", input=SENTENCE, response_format=fmt
    )  # type: ignore[arg-type]
    seconds = _duration(audio.content, fmt)
    # About 10-20 characters a second of speech.
    assert len(SENTENCE) / 25 < seconds < len(SENTENCE) / 6, seconds


async def test_content_types(speech_stack: RunningStack) -> None:
    expected = {
        "mp3": "audio/mpeg",
        "opus": "audio/ogg",
        "aac": "audio/aac",
        "flac": "audio/flac",
        "wav": "audio/wav",
        "pcm": "audio/pcm",
    }
    async with aiohttp.ClientSession() as session:
        for fmt, content_type in expected.items():
            body = {
                "model": SPEECH_MODEL_ID,
                "voice": "joe",
                "input": "Hi.",
                "response_format": fmt,
            }
            async with session.post(f"{speech_stack.base_url}/audio/speech", json=body) as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith(content_type)
                assert await r.read()


@pytest.mark.parametrize("speed", [0.25, 0.5, 2.0, 4.0])
def test_speed_scales_the_duration(client: openai.OpenAI, speed: float) -> None:
    def seconds(speed: float) -> float:
        audio = client.audio.speech.create(
            model=SPEECH_MODEL_ID, voice="alloy", input=SENTENCE, response_format="wav", speed=speed
        )
        return _duration(audio.content, "wav")

    # Piper's voice is randomised (noise_w), so the reference varies a little run to run.
    ratio = seconds(speed) / seconds(1.0)
    assert ratio == pytest.approx(1 / speed, rel=0.12), ratio


async def test_audio_streams_before_synthesis_finishes(speech_stack: RunningStack) -> None:
    body = {"model": SPEECH_MODEL_ID, "voice": "alloy", "input": STORY, "response_format": "mp3"}
    started = time.monotonic()
    arrivals = []
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{speech_stack.base_url}/audio/speech", json=body) as r,
    ):
        async for chunk in r.content.iter_any():
            arrivals.append((time.monotonic() - started, len(chunk)))
    first, total = arrivals[0][0], arrivals[-1][0]
    assert len(arrivals) > 3, "audio arrives in pieces, sentence by sentence"
    assert first < total / 3, f"first bytes at {first:.2f} s of {total:.2f} s"


async def test_sse_stream_format(speech_stack: RunningStack) -> None:
    body = {
        "model": SPEECH_MODEL_ID,
        "voice": "alloy",
        "input": SENTENCE,
        "response_format": "mp3",
        "stream_format": "sse",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{speech_stack.base_url}/audio/speech", json=body) as r,
    ):
        assert r.headers["Content-Type"].startswith("text/event-stream")
        raw = (await r.read()).decode()
    events = [json.loads(e.removeprefix("data: ")) for e in raw.split("\n\n") if e]
    deltas, done = events[:-1], events[-1]
    assert deltas and all(e["type"] == "speech.audio.delta" for e in deltas)
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert _duration(audio, "mp3") > 1.0
    assert done["type"] == "speech.audio.done"
    usage = done["usage"]
    assert usage["input_tokens"] == len(SENTENCE) and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


@pytest.mark.parametrize(
    ("override", "param", "fragment"),
    [
        ({"voice": "bob"}, "voice", "alloy"),  # the message lists the valid voices
        ({"response_format": "ogg"}, "response_format", ""),
        ({"speed": 5.0}, "speed", ""),
        ({"speed": 0.1}, "speed", ""),
        ({"input": ""}, "input", ""),
        ({"input": "x" * 4097}, "input", ""),
    ],
)
async def test_bad_requests_are_400(
    speech_stack: RunningStack, override: dict, param: str, fragment: str
) -> None:
    body = {"model": SPEECH_MODEL_ID, "voice": "alloy", "input": "Hi.", **override}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{speech_stack.base_url}/audio/speech", json=body) as r,
    ):
        assert r.status == 400
        error = (await r.json())["error"]
    assert error["param"] == param and fragment in error["message"]


def test_sdk_streaming_response_and_models(client: openai.OpenAI, tmp_path: Path) -> None:
    target = tmp_path / "hello.mp3"
    with client.audio.speech.with_streaming_response.create(
        model=SPEECH_MODEL_ID, voice="nova", input=SENTENCE
    ) as response:
        response.stream_to_file(target)
    assert _duration(target.read_bytes(), "mp3") > 1.0
    model = client.models.retrieve(SPEECH_MODEL_ID).model_dump()
    assert model["kind"] == "speech" and "alloy" in model["voices"]
