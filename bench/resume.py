"""Part: the stall a mid-stream resume costs. Three stand-in replicas cut every call
after K tokens, so each stream of 3K tokens is cut twice and resumed twice (router
resume: decode the kept messages, pick another replica, re-send prompt + emitted ids).

The client times every SSE chunk; a stream's two largest inter-chunk gaps are its two
resumes, reported minus the stand-in's own token interval, as p50/p99 over all resumes
and, for the plot, every stall (resume_gaps_ms).
Re-prefill cost: a continuation re-sends the prompt plus every emitted token (the
stand-in computes nothing for them; a real engine prefills them, see the README).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path

import aiohttp

from bench.common import STAND_IN_MODEL, percentile
from devstack.engine_args import scripted_engine_args
from devstack.processes import free_port
from devstack.stack import Stack, StackPlan


def _stack(results: Path, rate: float, cut_after: int) -> Stack:
    behaviour = {"tokens_per_second": rate, "fail_after_tokens": cut_after}
    # Every call fails here by design: keep the breakers from ejecting the replicas.
    config = results / "resume-router.yaml"
    config.write_text(json.dumps({"breaker": {"consecutive_failures": 1_000_000}}))
    plan = StackPlan(
        router_args=["--config", str(config)],
        edge_port=free_port(),
        router_port=free_port(),
        engine_ports=[free_port() for _ in range(3)],
        engine_args=scripted_engine_args(STAND_IN_MODEL, **behaviour),
        model_ids=[STAND_IN_MODEL],
        log_dir=results,
    )
    return Stack(plan).start(timeout_s=60)


async def _stream(session: aiohttp.ClientSession, url: str, tokens: int) -> list[float]:
    body = {
        "model": STAND_IN_MODEL,
        "messages": [{"role": "user", "content": "go"}],
        "max_tokens": tokens,
        "stream": True,
    }
    arrivals, text = [], ""
    async with session.post(url, json=body) as response:
        async for line in response.content:
            if line.startswith(b"data: {"):
                arrivals.append(time.monotonic())
                delta = json.loads(line[6:])["choices"]
                text += "".join(c["delta"].get("content") or "" for c in delta)
    assert text == "".join(f"tok{i} " for i in range(tokens)), "resumed stream differs"
    return sorted(b - a for a, b in itertools.pairwise(arrivals))[-2:]


async def _load(url: str, streams: int, tokens: int) -> list[float]:
    async with aiohttp.ClientSession() as session:
        gaps = await asyncio.gather(*(_stream(session, url, tokens) for _ in range(streams)))
    return [g for pair in gaps for g in pair]


def run(results: Path, streams: int = 32, rate: float = 50.0, cut_after: int = 20) -> dict:
    stack = _stack(results, rate, cut_after)
    try:
        url = f"{stack.plan.base_url}/chat/completions"
        gaps = asyncio.run(_load(url, streams, 3 * cut_after))
    finally:
        stack.stop()
    stalls_ms = [max(g - 1 / rate, 0) * 1000 for g in gaps]
    return {
        "streams": streams,
        "resumes": len(stalls_ms),
        "tokens_per_s_per_stream": rate,
        "resume_gap_p50_ms": round(percentile(stalls_ms, 50), 1),
        "resume_gap_p99_ms": round(percentile(stalls_ms, 99), 1),
        # Every resume's stall, for the report's CDF (bench/part_plots.py).
        "resume_gaps_ms": sorted(round(s, 2) for s in stalls_ms),
        "re_prefill_tokens_per_resume": f"prompt + emitted ({cut_after} and {2 * cut_after})",
    }
