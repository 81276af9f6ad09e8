"""Part 2: what the relay (edge + router) can carry, with a stand-in engine that emits
tokens at a set rate per stream, so the model is never the limit.

The stand-in stamps every token with the moment it emitted it (CLOCK_MONOTONIC, which all
processes on the machine share), so the client sees exactly what the relay added:
- added latency: arrival at the client minus emission, for every token (coalescing's hold
  shows up here);
- added ITL: for successive SSE chunks, the gap the client saw minus the gap between the
  emissions of their newest tokens, i.e. the inter-token jitter the relay introduces.
For each number of concurrent streams the per-stream token rate is raised step by step
until the relay falls behind the offered load; a step passes when its p99 added ITL is
within 5 ms and nothing fails. Reported: the streamed tokens/s of the best passing step,
CPU seconds per 1,000 tokens for edge and router, the cores each process kept busy, and
short (1-token, non-streamed) requests per second.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from bench import transport_floor
from bench.common import (
    STAND_IN_MODEL,
    cpu_seconds,
    own_cpu_seconds,
    percentile,
    stand_in_stack,
)
from devstack.stack import Stack
from services.proto_gen.tera.v1 import engine_pb2 as pb

MODEL = STAND_IN_MODEL
ADDED_ITL_LIMIT_MS = 5.0
# A step that delivers less than this share of the offered tokens/s is saturated.
SATURATED = 0.8
STREAM_SECONDS = 4.0
# The stand-in's decode step, shared by its streams. A GPU engine steps every 10-30 ms for
# a whole batch; 5 ms is faster than any of them, so the relay sees more messages than it
# would in production: at 100 tok/s a stream, a stream has a token every other step (which
# steps, by the tick it joined; the bench's streams start together, so mostly the same).
STEP_MS = 5.0
# The figure, GPU-shaped: every step gives every running stream one token, so the
# step is the token interval (10 ms at this rate) and a message carries every stream.
GPU_SHAPED_RATE = 100.0
TRANSPORT_FLOOR_SECONDS = 5.0
# Steps run at these stream counts as well, for the split of the relay's CPU into a cost a
# decode step and a cost a token (at one stream, a step's cost is nearly all of it).
SPLIT_STREAMS = (1, 8)
# Above this, the stand-in fell behind and packed tokens: the split's line leaves it out.
ONE_TOKEN_A_MESSAGE = 1.05
# Rounds of the host reference: about 50 ms on a quiet host.
REFERENCE_ROUNDS = 4000


@dataclass
class StepResult:
    streams: int
    rate_per_stream: float
    tokens_per_s: float
    added_itl_p50_ms: float
    added_itl_p99_ms: float
    added_latency_p50_ms: float
    added_latency_p99_ms: float
    # Above 1 with coalescing off: the engine fell behind and sent several tokens at once,
    # which makes each token cheaper to relay than one per message.
    tokens_per_chunk: float
    edge_cpu_per_1k: float
    router_cpu_per_1k: float
    # The figure: edge + router cores that 10,000 streamed tokens/s would keep busy.
    relay_cores_per_10k: float
    # Cores busy during the step, per process: all four share the machine's two.
    cores: dict[str, float]
    errors: int
    # host_reference_ms around the step (mean of before and after); None: not measured.
    host_reference_ms: float | None = None


def relay_stack(
    results: Path,
    rate: float,
    coalesce_ms: int,
    engine_transport: str = "stream",
    router_transport: str = "stream",
    step_ms: float = STEP_MS,
    **extra: Any,
) -> Stack:
    """The stand-in stack the relay parts measure (and profile.py, gc_pauses.py): one
    stand-in engine stepping `rate` tokens a second a stream. `extra`: more of
    stand_in_stack's settings (env, edge_ops)."""
    return stand_in_stack(
        results,
        {
            "tokens_per_second": rate,
            "default_max_tokens": 16,
            "step_ms": step_ms,
            "shared_steps": True,
            "token_text": "t{i}@{t} ",
        },
        engine_args=[
            "--coalesce-window-ms",
            str(coalesce_ms),
            "--max-in-flight",
            "4096",
            "--max-context-length",
            "1000000",
        ],
        router_args=["--engine-transport", engine_transport, *extra.pop("router_args", ())],
        edge_args=["--router-transport", router_transport],
        **extra,
    )


_STAMP = re.compile(rb"@(\d+)")


@dataclass
class _Timings:
    itl_ms: list[float]
    latency_ms: list[float]
    chunks: int = 0


async def _stream(
    session: aiohttp.ClientSession, url: str, tokens: int, timings: _Timings, model: str
) -> tuple[int, bool]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "go"}],
        "max_tokens": tokens,
        "stream": True,
    }
    received, previous = 0, None
    async with session.post(url, json=body) as response:
        if response.status != 200:
            return 0, False
        async for line in response.content:
            if not line.startswith(b"data: {") or not (stamps := _STAMP.findall(line)):
                continue
            now_us = time.monotonic() * 1e6
            timings.latency_ms.extend((now_us - int(t)) / 1000 for t in stamps)
            delay_us = now_us - int(stamps[-1])
            if previous is not None:
                timings.itl_ms.append((delay_us - previous) / 1000)
            previous = delay_us
            received += len(stamps)
            timings.chunks += 1
    return received, received == tokens


def _cpu_snapshot(stack: Stack) -> dict[str, float]:
    """CPU seconds so far by process; a colocated router's are its edge's (the gateway's)."""
    assert stack.edge is not None
    pids = {"edge": stack.edge.pid, "engine": stack.engines[0].pid}
    cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    cpu["router"] = cpu_seconds(stack.router.pid) if stack.router is not None else 0.0
    return cpu | {"load generator": own_cpu_seconds()}


async def _step(stack: Stack, streams: int, rate: float, model: str = MODEL) -> StepResult:
    url = f"{stack.plan.base_url}/chat/completions"
    tokens = max(2, int(rate * STREAM_SECONDS))
    timings = _Timings([], [])
    cpu0 = _cpu_snapshot(stack)
    started = time.monotonic()
    limits = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=limits, timeout=aiohttp.ClientTimeout(total=300)
    ) as session:
        outcomes = await asyncio.gather(
            *(_stream(session, url, tokens, timings, model) for _ in range(streams))
        )
    wall = time.monotonic() - started
    cpu = {name: seconds - cpu0[name] for name, seconds in _cpu_snapshot(stack).items()}
    total = sum(n for n, _ in outcomes)
    thousands = max(total / 1000, 1e-9)
    return StepResult(
        streams=streams,
        rate_per_stream=rate,
        tokens_per_s=total / wall,
        added_itl_p50_ms=percentile(timings.itl_ms, 50),
        added_itl_p99_ms=percentile(timings.itl_ms, 99),
        added_latency_p50_ms=percentile(timings.latency_ms, 50),
        added_latency_p99_ms=percentile(timings.latency_ms, 99),
        tokens_per_chunk=total / max(timings.chunks, 1),
        edge_cpu_per_1k=cpu["edge"] / thousands,
        router_cpu_per_1k=cpu["router"] / thousands,
        relay_cores_per_10k=(cpu["edge"] + cpu["router"]) / thousands * 10,
        cores={name: round(seconds / wall, 2) for name, seconds in cpu.items()},
        errors=sum(1 for _, ok in outcomes if not ok),
    )


def host_reference_ms() -> float:
    """CPU milliseconds for a fixed piece of the relay's kind of work: a protobuf message
    parsed and written, a chunk's JSON, a 100-byte send and receive over loopback TCP.
    The host's speed drifts by a third within an hour (its other tenants), so a relay
    figure compares with another only beside the reference measured with it."""
    message = pb.GenerateResponse(choices=[pb.ChoiceDelta(text="token", num_tokens=1)])
    chunk = {"choices": [{"index": 0, "delta": {"content": "token"}, "finish_reason": None}]}
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = socket.create_connection(server.getsockname())
        receiver, _ = server.accept()
        with sender, receiver:
            sender.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            started = time.process_time()
            for _ in range(REFERENCE_ROUNDS):
                pb.GenerateResponse.FromString(message.SerializeToString())
                sender.sendall(json.dumps(chunk).encode())
                receiver.recv(4096)
            return (time.process_time() - started) * 1000


def _measured_step(stack: Stack, streams: int, rate: float) -> StepResult:
    """A step with the host reference taken just before and just after it."""
    before = host_reference_ms()
    step = uvloop.run(_step(stack, streams, rate))
    step.host_reference_ms = (before + host_reference_ms()) / 2
    return step


async def _short_requests(
    stack: Stack, concurrency: int, seconds: float, model: str = MODEL
) -> float:
    url = f"{stack.plan.base_url}/chat/completions"
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    done = 0
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                async with session.post(url, json=body) as r:
                    await r.read()
                    done += r.status == 200

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.monotonic() - started)


def run(
    results: Path,
    streams: tuple[int, ...],
    rates: tuple[float, ...],
    coalesce_ms: int,
    engine_transport: str = "stream",
    router_transport: str = "stream",
) -> dict:
    steps: list[StepResult] = []
    best: dict[int, StepResult] = {}
    saturated: set[int] = set()
    for rate in rates:  # the stand-in's rate is per process: one stack per rate
        active = [n for n in streams if n not in saturated]
        if not active:
            break
        stack = relay_stack(results, rate, coalesce_ms, engine_transport, router_transport)
        try:
            uvloop.run(_short_requests(stack, 16, 0.5))  # warm: connections, first calls
            for n in active:
                step = _measured_step(stack, n, rate)
                steps.append(step)
                # The relay's cost is per message, and with coalescing a faster stream
                # packs more tokens per message: a failing step does not end the sweep,
                # only falling behind the offered load does.
                if step.errors or step.tokens_per_s < SATURATED * n * rate:
                    saturated.add(n)
                elif step.added_itl_p99_ms <= ADDED_ITL_LIMIT_MS and (
                    n not in best or step.tokens_per_s > best[n].tokens_per_s
                ):
                    best[n] = step
        finally:
            stack.stop()
    stack = relay_stack(results, 1000, coalesce_ms, engine_transport, router_transport)
    try:
        uvloop.run(_short_requests(stack, 64, 1.0))
        short_rps = uvloop.run(_short_requests(stack, 64, 8.0))
    finally:
        stack.stop()
    return {
        "steps": [s.__dict__ for s in steps],
        "best": {n: s.__dict__ for n, s in best.items()},
        "short_requests_per_s": short_rps,
        "coalesce_window_ms": coalesce_ms,
        "engine_transport": engine_transport,
        "router_transport": router_transport,
    }


def cost_split(steps: list[StepResult]) -> dict[str, dict[str, float]]:
    """Edge's and router's CPU as a cost a decode step plus a cost a token: the least-squares
    line of each one's cores over the steps' tokens/s, all steps at the same step rate (its
    intercept is the steps' cost; a stream's set-up falls on the tokens, 400 a stream)."""
    steps = [s for s in steps if s.tokens_per_chunk <= ONE_TOKEN_A_MESSAGE and not s.errors]
    if len({s.streams for s in steps}) < 2:
        return {}
    rates = [s.tokens_per_s for s in steps]
    split = {}
    for name in ("edge", "router"):
        cores = [getattr(s, f"{name}_cpu_per_1k") * s.tokens_per_s / 1000 for s in steps]
        per_token, per_second = statistics.linear_regression(rates, cores)
        split[name] = {
            "per_step_us": per_second / GPU_SHAPED_RATE * 1e6,
            "per_token_us": per_token * 1e6,
        }
    return split


def run_gpu_shaped(
    results: Path,
    streams: tuple[int, ...],
    engine_transport: str = "stream",
    router_transport: str = "stream",
) -> dict:
    """The relay's cost at one token a message with the stand-in stepping as a GPU does at
    GPU_SHAPED_RATE a stream: one step per token interval, all streams in each step; the
    two processes first, then the gateway."""
    step_ms = 1000 / GPU_SHAPED_RATE
    split_only = [n for n in SPLIT_STREAMS if n not in streams]
    apart = relay_stack(
        results, GPU_SHAPED_RATE, 0, engine_transport, router_transport, step_ms=step_ms
    )
    steps = _gpu_shaped_steps(apart, split_only + list(streams))
    # What `tera run` starts by default: edge and router in one process (services/gateway,
    # the edge's link to the router joined in memory), its CPU reported as the edge's.
    one = relay_stack(
        results, GPU_SHAPED_RATE, 0, engine_transport, step_ms=step_ms, colocated=True
    )
    gateway = _gpu_shaped_steps(one, list(streams))
    return {
        "steps": [s.__dict__ for s in steps],
        "gateway_steps": [s.__dict__ for s in gateway],
        "split": cost_split(steps),
        "transport_floor": transport_floor.measure(GPU_SHAPED_RATE, TRANSPORT_FLOOR_SECONDS),
        "step_ms": step_ms,
        "engine_transport": engine_transport,
        "router_transport": router_transport,
    }


def _gpu_shaped_steps(stack: Stack, streams: list[int]) -> list[StepResult]:
    """Warms `stack`, measures a GPU-shaped step at each number of streams, then stops it."""
    try:
        uvloop.run(_short_requests(stack, 16, 0.5))
        return [_measured_step(stack, n, GPU_SHAPED_RATE) for n in streams]
    finally:
        stack.stop()
