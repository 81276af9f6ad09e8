"""Stand-in stacks timed side by side: streamed chat requests at concurrency 1 go to each
in turn, two at a time (AABB…), so all see the same moments of the machine, and the
stacks are started anew each round, so their processes' places on the CPUs vary too.
Untraced, as `vs_vllm`. What the at_once and router_hop parts share."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import aiohttp

from bench.common import STAND_IN_MODEL, percentile
from bench.waterfall import streamed_chat_body, timed_first_token
from devstack.stack import Stack

# The stand-in engine's pace: its first token comes at once, so the stack is all there is.
BEHAVIOUR = {"tokens_per_second": 200}


async def _first_token_ms(session: aiohttp.ClientSession, url: str, body: dict) -> float:
    send_ns, first_ns = await timed_first_token(session, url, body)
    return (first_ns - send_ns) / 1e6


async def _alternate(urls: dict[str, str], requests: int, gap_s: float) -> dict[str, list[float]]:
    """`requests` a stack, in pairs by turns; the first pair of each is a warm-up."""
    body = streamed_chat_body(STAND_IN_MODEL, 16)
    names = list(urls)
    out: dict[str, list[float]] = {name: [] for name in names}
    async with aiohttp.ClientSession() as session:
        for i in range(len(names) * (requests + 2)):
            name = names[(i // 2) % len(names)]
            ms = await _first_token_ms(session, urls[name], body)
            if i >= 2 * len(names):
                out[name].append(ms)
            await asyncio.sleep(gap_s)
    return out


def compare(
    start: dict[str, Callable[[], Stack]],
    *,
    rounds: int = 3,
    requests: int = 300,
    gap_s: float = 0.01,
) -> list[dict]:
    """`start`: named ways to start a stack, the one the others are measured against
    last. One row a round: each stack's client first-token p50/p90 (ms), and for each
    but the last what it saves against the last (`saved_p50_ms`, `saved_p90_ms`)."""
    *arms, baseline = start
    rows = []
    for _ in range(rounds):
        with contextlib.ExitStack() as started:  # each stopped, whichever failed to start
            urls = {}
            for name, starting in start.items():
                stack = starting()
                started.callback(stack.stop)
                urls[name] = f"{stack.plan.base_url}/chat/completions"
            times = asyncio.run(_alternate(urls, requests, gap_s))
        row: dict = {"requests": requests}
        for name, ms in times.items():
            row[name] = {"p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90)}
        for name in arms:
            for q in ("p50", "p90"):
                row[name][f"saved_{q}_ms"] = row[baseline][f"{q}_ms"] - row[name][f"{q}_ms"]
        rows.append(row)
    return rows
