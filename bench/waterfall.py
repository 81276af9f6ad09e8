"""Part: the first-token waterfall. Where the time to first token goes, segment by
segment, from a streamed chat request's send to its first token's bytes at the client.

The marks come from the request's trace (every service exports OTLP to a receiver this
part starts) plus two client timestamps; all are wall-clock readings of one machine,
so they line up. Run at concurrency 1 and 32, on the stand-in engine (the relay alone)
and on real vLLM (the engine's part too); p50 and p99 per segment. Tracing is on, so the
totals are a little above an untraced run's (the vs_vllm part has those).

The contention experiment: vLLM on CPU binds its OpenMP threads to all cores but one
and leaves the last to the serving processes (VLLM_CPU_OMP_THREADS_BIND=auto, one
reserved CPU). The vLLM run is repeated with the edge and router confined to that last
CPU, so they can no longer preempt a decode step; the difference is what their wake-ups
cost the engine.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.common import STAND_IN_MODEL, percentile, stand_in_stack, vllm_plan
from bench.vs_vllm import start_vllm_server
from devstack.stack import Stack
from services.engine.model_prep import DEFAULT_MODEL_ID
from tests.observability.otlp_receiver import OtlpReceiver, ReceivedSpan

SERVER, CLIENT = 2, 3
SERVICES = {"tera-edge", "tera-router", "tera-engine"}
# vLLM's own request span (its tracing on: Tera's engine turns it on with its own, and
# vLLM's server here is started with --otlp-traces-endpoint under this service name).
# It starts at vLLM's arrival time (before the chat template and tokenizing, in both
# servers) and carries the time from there to vLLM's first output.
VLLM_SPAN, VLLM_SERVER = "llm_request", "vllm-server"
VLLM_TTFT = "gen_ai.latency.time_to_first_token"
OWN_SERVER = "vLLM's own server, tera run's CPU layout"

# (segment, from mark, to mark), in the order a request meets them. A segment whose
# marks a run lacks (the stand-in has no vLLM add_request) is left out of that run.
SEGMENTS = (
    ("client -> edge", "client send", "edge receive"),
    ("edge parse/validate", "edge receive", "edge call"),
    ("edge -> router", "edge call", "router receive"),
    ("router routing", "router receive", "router call"),
    ("router -> engine", "router call", "engine receive"),
    ("engine prepare (template, tokenize)", "engine receive", "vllm add_request"),
    ("vLLM to first output", "vllm add_request", "engine first output"),
    ("engine to first output", "engine receive", "engine first output"),
    ("engine -> router", "engine first output", "router first message"),
    ("router -> edge", "router first message", "edge first message"),
    ("edge render + write", "edge first message", "edge first chunk written"),
    ("edge -> client", "edge first chunk written", "client first token"),
)
# Tera's stack and vLLM's own server cut alike, at vLLM's two marks: what the server does
# before vLLM has the request (Tera: every hop to the engine), vLLM's own part, and what
# the server does from vLLM's first output to the client's first token.
SIDE_BY_SIDE = (
    ("before vLLM", "client send", "vllm arrival"),
    ("vLLM (template, tokenize, prefill)", "vllm arrival", "vllm first output"),
    ("after vLLM", "vllm first output", "client first token"),
)


@dataclass
class Sent:
    trace_id: str
    send_ns: int
    first_ns: int


def marks(spans: list[ReceivedSpan], sent: Sent) -> dict[str, int] | None:
    """Every mark of one request, in ns; None if its trace is incomplete."""

    def one(service: str, kind: int, name: str | None = None) -> ReceivedSpan | None:
        found = [
            s
            for s in spans
            if s.service == service
            and s.kind == kind
            and (s.name == name if name else s.name != VLLM_SPAN)
        ]
        return found[0] if len(found) == 1 else None

    http, edge_call = one("tera-edge", SERVER), one("tera-edge", CLIENT)
    router, router_call = one("tera-router", SERVER), one("tera-router", CLIENT)
    attempt, engine = one("tera-router", 1, "attempt"), one("tera-engine", SERVER)
    if None in (http, edge_call, router, router_call, attempt, engine):
        return None
    assert http and edge_call and router and router_call and attempt and engine
    found = {
        "client send": sent.send_ns,
        "edge receive": http.start_ns,
        "edge call": edge_call.start_ns,
        "router receive": router.start_ns,
        "router call": router_call.start_ns,
        "engine receive": engine.start_ns,
        "vllm add_request": engine.event_ns.get("vllm.add_request"),
        "engine first output": engine.event_ns.get("first_token"),
        "router first message": attempt.event_ns.get("first_message"),
        "edge first message": http.event_ns.get("first_message"),
        "edge first chunk written": http.event_ns.get("first_chunk_written"),
        "client first token": sent.first_ns,
        **vllm_marks(spans),
    }
    return {k: v for k, v in found.items() if v is not None}


def vllm_marks(spans: list[ReceivedSpan]) -> dict[str, int]:
    """vLLM's arrival and first output, from its request span; none without it."""
    found = [s for s in spans if s.name == VLLM_SPAN and VLLM_TTFT in s.attributes]
    if len(found) != 1:
        return {}
    ttft_s = float(found[0].attributes[VLLM_TTFT])  # type: ignore[arg-type]
    return {
        "vllm arrival": found[0].start_ns,
        "vllm first output": found[0].start_ns + round(ttft_s * 1e9),
    }


def server_marks(spans: list[ReceivedSpan], sent: Sent) -> dict[str, int] | None:
    """vLLM's own server's marks: the client's two and vLLM's; None without vLLM's."""
    inside = vllm_marks(spans)
    if not inside:
        return None
    return {"client send": sent.send_ns, **inside, "client first token": sent.first_ns}


# A segment left out when a finer mark inside it exists (vLLM's add_request splits it).
COARSE = {"engine to first output": "vllm add_request"}


def segments(
    marked: dict[str, int], cuts: tuple[tuple[str, str, str], ...] = SEGMENTS
) -> dict[str, float]:
    """Segment durations in ms, for the segments whose two marks this request has."""
    out = {}
    for name, start, end in cuts:
        if COARSE.get(name) in marked:
            continue
        if start in marked and end in marked:
            out[name] = (marked[end] - marked[start]) / 1e6
    return out


async def _one(session: aiohttp.ClientSession, url: str, body: dict) -> Sent:
    trace_id = secrets.token_hex(16)
    headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    send_ns, first_ns = await timed_first_token(session, url, body, headers)
    return Sent(trace_id, send_ns, first_ns)


async def timed_first_token(
    session: aiohttp.ClientSession, url: str, body: dict, headers: dict[str, str] | None = None
) -> tuple[int, int]:
    """Posts a streamed chat request and reads all of it: (sent, first token) in time_ns."""
    send_ns = time.time_ns()
    async with session.post(url, json=body, headers=headers) as response:
        await first_token(response.content)
        first_ns = time.time_ns()
        await response.read()
    return send_ns, first_ns


async def first_token(content: aiohttp.StreamReader) -> None:
    """Reads a streamed chat answer up to the bytes that bring its first token. Not its
    first bytes: chat's role chunk carries none, and both vLLM's server and Tera's edge
    write it on its own just before the token's."""
    pending = b""
    while chunk := await content.readany():
        *events, pending = (pending + chunk).split(b"\n\n")
        if any(_has_token(event) for event in events):
            return


def _has_token(event: bytes) -> bool:
    data = event.removeprefix(b"data: ")
    if data == b"[DONE]":
        return False
    choices = json.loads(data).get("choices") or [{}]
    delta = choices[0].get("delta") or {}
    return bool(delta.get("content") or delta.get("reasoning_content"))


async def _load(base_url: str, body: dict, requests: int, concurrency: int) -> list[Sent]:
    gate = asyncio.Semaphore(concurrency)
    url = f"{base_url}/chat/completions"

    async def gated(session: aiohttp.ClientSession) -> Sent:
        async with gate:
            return await _one(session, url, body)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        return await asyncio.gather(*(gated(session) for _ in range(requests)))


Marker = Callable[[list[ReceivedSpan], Sent], "dict[str, int] | None"]


def _measure(
    receiver: OtlpReceiver,
    base_url: str,
    body: dict,
    concurrency: int,
    requests: int,
    services: set[str] = SERVICES,
    marker: Marker = marks,
) -> dict:
    asyncio.run(_load(base_url, body, concurrency, concurrency))  # warm-up, not counted
    sent = asyncio.run(_load(base_url, body, requests, concurrency))
    marked = [marker(receiver.wait_for(s.trace_id, services, timeout_s=30), s) for s in sent]
    complete = [m for m in marked if m is not None]
    ttft = [(s.first_ns - s.send_ns) / 1e6 for s in sent]
    return {
        "concurrency": concurrency,
        "requests": len(complete),
        "segments": _percentiles([segments(m) for m in complete], SEGMENTS),
        "side_by_side": _percentiles([segments(m, SIDE_BY_SIDE) for m in complete], SIDE_BY_SIDE),
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p99_ms": percentile(ttft, 99),
    }


def _percentiles(rows: list[dict[str, float]], cuts: tuple[tuple[str, str, str], ...]) -> dict:
    """p50 and p99 of each segment every request has."""
    names = [n for n, _, _ in cuts if rows and all(n in r for r in rows)]
    return {
        n: {
            "p50_ms": percentile([r[n] for r in rows], 50),
            "p99_ms": percentile([r[n] for r in rows], 99),
        }
        for n in names
    }


def streamed_chat_body(model: str, max_tokens: int) -> dict:
    words = " ".join(f"w{i}" for i in range(48))  # a ~64-token prompt
    return {
        "model": model,
        "messages": [{"role": "user", "content": f"Summarise: {words}"}],
        "max_tokens": max_tokens,
        "stream": True,
    }


TERA_LAID_OUT = "vllm, tera run's layout (gateway)"


def _layouts() -> dict[str, dict[str, bool]]:
    """vLLM's own CPU binding with the relay unconfined, `tera run`'s binding with edge
    and router apart (`--split`), and `tera run`'s layout: that binding, the two in one
    process (each half's spans still under its own service)."""
    return {
        "vllm, unpinned, split": {"pinned": False},
        "vllm, tera run's CPU layout, split": {"pinned": True},
        TERA_LAID_OUT: {"pinned": True, "colocated": True},
    }


def run(
    results: Path, model_dir: Path | None, concurrencies: tuple[int, ...] = (1, 32)
) -> list[dict]:
    """Stand-in rows always; vLLM rows when a model directory is given."""
    out = []
    with OtlpReceiver() as receiver:
        stack = stand_in_stack(results, {"tokens_per_second": 200}, env=receiver.env)
        try:
            for c in concurrencies:
                body = streamed_chat_body(STAND_IN_MODEL, 16)
                row = _measure(receiver, stack.plan.base_url, body, c, max(64, 4 * c))
                out.append({"engine": "stand-in", **row})
        finally:
            stack.stop()
        if model_dir is not None:
            out += _vllm_rows(receiver, results, model_dir, concurrencies)
            out += _own_server_rows(receiver, results, model_dir, concurrencies)
    return out


def _vllm_rows(
    receiver: OtlpReceiver, results: Path, model_dir: Path, concurrencies: tuple[int, ...]
) -> list[dict]:
    out = []
    for name, layout in _layouts().items():
        plan = vllm_plan(model_dir, results, env=receiver.env, **layout)
        stack = Stack(plan).start(timeout_s=600)
        try:
            for c in concurrencies:
                body = streamed_chat_body(DEFAULT_MODEL_ID, 16)
                row = _measure(receiver, stack.plan.base_url, body, c, max(24, 3 * c))
                out.append({"engine": name, **row})
        finally:
            stack.stop()
    return out


def _own_server_rows(
    receiver: OtlpReceiver, results: Path, model_dir: Path, concurrencies: tuple[int, ...]
) -> list[dict]:
    """vLLM's own server, laid out as `tera run` lays out Tera's stack, its request spans
    exported to the same receiver: the same three parts, for the side-by-side table."""
    endpoint = receiver.env["OTEL_EXPORTER_OTLP_ENDPOINT"]
    server, base = start_vllm_server(
        model_dir,
        results,
        log="vllm-server-traced.log",
        extra_args=("--otlp-traces-endpoint", endpoint),
        env={"OTEL_SERVICE_NAME": VLLM_SERVER, **receiver.env},
    )
    try:
        out = []
        for c in concurrencies:
            body = streamed_chat_body(DEFAULT_MODEL_ID, 16)
            row = _measure(
                receiver, f"{base}/v1", body, c, max(24, 3 * c), {VLLM_SERVER}, server_marks
            )
            out.append({"engine": OWN_SERVER, **row})
        return out
    finally:
        server.stop()
