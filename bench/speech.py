"""Speech: time to first audio byte and real-time factor through the full stack."""

from __future__ import annotations

import io
import time
from pathlib import Path

import av
import httpx

from bench.common import percentile
from devstack.engine_args import SPEECH_MODEL_ID, speech_engine_args
from devstack.processes import free_port
from devstack.stack import Stack, StackPlan

TEXT = (
    "Tera turns text into speech one sentence at a time. The first sentence plays while "
    "the next is still being synthesized. This keeps the wait short for long answers."
)


def _duration(data: bytes) -> float:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        return sum(f.samples for f in container.decode(stream)) / stream.rate


def run(results: Path, requests: int = 5) -> dict:
    plan = StackPlan(
        edge_port=free_port(),
        router_port=free_port(),
        engine_ports=[free_port()],
        engine_args=speech_engine_args(),
        model_ids=[SPEECH_MODEL_ID],
        log_dir=results,
    )
    stack = Stack(plan).start(timeout_s=120)
    ttfb, rtf = [], []
    try:
        body = {"model": SPEECH_MODEL_ID, "voice": "alloy", "input": TEXT, "response_format": "mp3"}
        with httpx.Client(timeout=60) as client:
            for _ in range(requests):
                started = time.monotonic()
                first = None
                data = bytearray()
                with client.stream("POST", f"{plan.base_url}/audio/speech", json=body) as r:
                    for chunk in r.iter_bytes():
                        first = first or time.monotonic() - started
                        data += chunk
                total = time.monotonic() - started
                ttfb.append(first or total)
                rtf.append(total / _duration(bytes(data)))
    finally:
        stack.stop()
    return {
        "characters": len(TEXT),
        "ttfb_ms_p50": percentile(ttfb, 50) * 1000,
        "rtf_p50": percentile(rtf, 50),
    }
