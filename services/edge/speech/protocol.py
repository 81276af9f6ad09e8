"""Speech request model (OpenAI's createSpeech) and its proto form."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.edge.generation.protocol import MAX_MODEL_CHARS, OpenAIModel
from services.proto_gen.tera.v1 import engine_pb2 as pb

AudioFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]

FORMATS = {
    "mp3": (pb.AUDIO_FORMAT_MP3, "audio/mpeg"),
    "opus": (pb.AUDIO_FORMAT_OPUS, "audio/ogg; codecs=opus"),
    "aac": (pb.AUDIO_FORMAT_AAC, "audio/aac"),
    "flac": (pb.AUDIO_FORMAT_FLAC, "audio/flac"),
    "wav": (pb.AUDIO_FORMAT_WAV, "audio/wav"),
    # 24 kHz, 16-bit little-endian, mono, no header (as OpenAI documents pcm).
    "pcm": (pb.AUDIO_FORMAT_PCM, "audio/pcm; rate=24000; channels=1; encoding=s16le"),
}


class CustomVoice(OpenAIModel):
    id: str = Field(min_length=1)


class SpeechRequest(OpenAIModel):
    model: str = Field(min_length=1, max_length=MAX_MODEL_CHARS)
    input: str = Field(min_length=1, max_length=4096)
    voice: str | CustomVoice
    instructions: str | None = Field(None, max_length=4096)  # accepted; piper ignores it
    response_format: AudioFormat = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"

    @property
    def voice_id(self) -> str:
        return self.voice if isinstance(self.voice, str) else self.voice.id

    @property
    def content_type(self) -> str:
        return FORMATS[self.response_format][1]

    def to_proto(self, request_id: str, model: str) -> pb.SynthesizeRequest:
        return pb.SynthesizeRequest(
            request_id=request_id,
            model=model,
            input=self.input,
            voice=self.voice_id,
            format=FORMATS[self.response_format][0],
            speed=self.speed,
            instructions=self.instructions or "",
        )
