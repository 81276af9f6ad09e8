"""Chunk-by-chunk audio encoding with PyAV, for streaming synthesis.

Every format is encoded at 24 kHz mono (OpenAI's rate; `pcm` is documented as 24 kHz
16-bit little-endian mono). Output goes to an in-memory sink that is drained after each
chunk; muxers see a non-seekable stream, so WAV is written with streaming sizes.
"""

from __future__ import annotations

import av
import numpy as np

from services.proto_gen.tera.v1 import engine_pb2 as pb

OUTPUT_RATE = 24_000

# format -> (container, codec); pcm has no container.
_FORMATS = {
    pb.AUDIO_FORMAT_MP3: ("mp3", "libmp3lame"),
    pb.AUDIO_FORMAT_OPUS: ("ogg", "libopus"),
    pb.AUDIO_FORMAT_AAC: ("adts", "aac"),
    pb.AUDIO_FORMAT_FLAC: ("flac", "flac"),
    pb.AUDIO_FORMAT_WAV: ("wav", "pcm_s16le"),
}


class _Sink:
    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        return len(data)

    def drain(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


class AudioEncoder:
    """encode(samples) for each chunk as it is synthesized, then finish() once."""

    def __init__(self, audio_format: int, input_rate: int) -> None:
        self._input_rate = input_rate
        self._sink = _Sink()
        if audio_format == pb.AUDIO_FORMAT_PCM:
            self._container = None
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=OUTPUT_RATE)
            return
        container, codec = _FORMATS[audio_format]
        self._container = av.open(self._sink, mode="w", format=container)
        self._stream = self._container.add_stream(codec, rate=OUTPUT_RATE, layout="mono")
        self._resampler = av.AudioResampler(
            format=self._stream.format.name, layout="mono", rate=OUTPUT_RATE
        )

    def encode(self, samples: np.ndarray) -> bytes:
        frame = av.AudioFrame.from_ndarray(
            samples.astype(np.float32).reshape(1, -1), format="flt", layout="mono"
        )
        frame.sample_rate = self._input_rate
        self._write(self._resampler.resample(frame))
        return self._sink.drain()

    def finish(self) -> bytes:
        self._write(self._resampler.resample(None))
        if self._container is not None:
            self._mux(self._stream.encode(None))
            self._container.close()
        return self._sink.drain()

    def _write(self, frames: list[av.AudioFrame]) -> None:
        for frame in frames:
            if self._container is None:
                self._sink.write(frame.to_ndarray().astype("<i2").tobytes())
            else:
                self._mux(self._stream.encode(frame))

    def _mux(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            self._container.mux(packet)  # type: ignore[union-attr]
