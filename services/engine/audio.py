"""Chunk-by-chunk audio encoding with PyAV, for streaming synthesis.

Every format is encoded at 24 kHz mono (OpenAI's rate; `pcm` is documented as 24 kHz
16-bit little-endian mono). Output goes to an in-memory sink that is drained after each
chunk; muxers see a non-seekable stream, so WAV is written with streaming sizes.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import av
import numpy as np
from av.filter import Graph

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


def _mono_frame(samples: np.ndarray, rate: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(
        samples.astype(np.float32).reshape(1, -1), format="flt", layout="mono"
    )
    frame.sample_rate = rate
    return frame


# atempo accepts 0.5..100 per instance; slower speeds chain several.
_ATEMPO_MIN = 0.5


class TimeStretch:
    """Changes speaking rate without changing pitch (ffmpeg's WSOLA `atempo` filter).

    Piper's own `length_scale` cannot honour OpenAI's `speed`: the model rounds each
    phoneme up to whole frames, so asking for 4x gives about 2x. Stretching the natural
    rendering afterwards makes the duration exactly 1/speed.
    """

    def __init__(self, rate: int, speed: float) -> None:
        self._rate = rate
        self._pts = 0
        self._graph: Graph | None = None if speed == 1.0 else self._build(rate, speed)

    @staticmethod
    def _build(rate: int, speed: float) -> Graph:
        factors = []
        while speed < _ATEMPO_MIN:
            factors.append(_ATEMPO_MIN)
            speed /= _ATEMPO_MIN
        factors.append(speed)
        graph = Graph()
        chain = [
            graph.add_abuffer(
                format="flt", sample_rate=rate, layout="mono", time_base=Fraction(1, rate)
            )
        ]
        chain += [graph.add("atempo", str(factor)) for factor in factors]
        chain.append(graph.add("abuffersink"))
        for upstream, downstream in itertools.pairwise(chain):
            upstream.link_to(downstream)
        graph.configure()
        return graph

    def process(self, samples: np.ndarray) -> np.ndarray:
        if self._graph is None:
            return samples
        frame = _mono_frame(samples, self._rate)
        frame.time_base = Fraction(1, self._rate)
        frame.pts = self._pts
        self._pts += len(samples)
        self._graph.push(frame)
        return self._drain()

    def finish(self) -> np.ndarray:
        if self._graph is None:
            return np.zeros(0, dtype=np.float32)
        self._graph.push(None)
        return self._drain()

    def _drain(self) -> np.ndarray:
        assert self._graph is not None
        parts = [np.zeros(0, dtype=np.float32)]
        while True:
            try:
                frame = self._graph.pull()
            except (av.BlockingIOError, av.EOFError):
                break
            parts.append(frame.to_ndarray().reshape(-1))
        return np.concatenate(parts)


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
        frame = _mono_frame(samples, self._input_rate)
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
