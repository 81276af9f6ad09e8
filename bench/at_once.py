"""Part: what writing a stream's open and first message at once saves (services/common/mux.py,
`Outbox.put_at_once`), against leaving them for the end of the sender's event-loop turn.

Two stand-in stacks run side by side, one as shipped and one whose processes start with
`put_at_once` made a plain `put` (a sitecustomize on their PYTHONPATH; the serving code
has no switch for it). Streamed chat requests at concurrency 1 alternate between them in
pairs (AABB…), so both see the same moments of the machine; the stacks are started anew
for each round, so the processes' places on the CPUs vary too. Untraced, as `vs_vllm`.

    python -m bench.run --parts at_once
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import aiohttp

from bench.common import ROOT, STAND_IN_MODEL, percentile, stand_in_stack
from bench.waterfall import streamed_chat_body, timed_first_token

# Imported by each process of the "batched" stack at start-up (before services are).
BATCHED_SHIM = """\
from services.common.mux import Outbox

Outbox.put_at_once = Outbox.put  # bench/at_once.py: the behaviour before it
"""
SHIPPED, BATCHED = "at once (shipped)", "end of turn (before)"


def batched_env(shim_dir: Path) -> dict[str, str]:
    """The environment that starts a process with `put_at_once` undone."""
    (shim_dir / "sitecustomize.py").write_text(BATCHED_SHIM)
    return {"PYTHONPATH": f"{shim_dir}:{ROOT}"}


async def _first_token_ms(session: aiohttp.ClientSession, url: str, body: dict) -> float:
    send_ns, first_ns = await timed_first_token(session, url, body)
    return (first_ns - send_ns) / 1e6


async def _alternate(urls: dict[str, str], requests: int, gap_s: float) -> dict[str, list[float]]:
    """`requests` a stack, in pairs by turns; the first pair of each is a warm-up."""
    body = streamed_chat_body(STAND_IN_MODEL, 16)
    names = list(urls)
    out: dict[str, list[float]] = {name: [] for name in names}
    async with aiohttp.ClientSession() as session:
        for i in range(2 * (requests + 2)):
            name = names[(i // 2) % 2]
            ms = await _first_token_ms(session, urls[name], body)
            if i >= 4:
                out[name].append(ms)
            await asyncio.sleep(gap_s)
    return out


def run(results: Path, rounds: int = 3, requests: int = 300, gap_s: float = 0.01) -> list[dict]:
    """One row a round: each stack's client first-token p50/p90 (ms), and the difference."""
    behaviour = {"tokens_per_second": 200}
    rows = []
    with tempfile.TemporaryDirectory() as shim:
        env = batched_env(Path(shim))
        for _ in range(rounds):
            stacks = {
                SHIPPED: stand_in_stack(results, behaviour),
                BATCHED: stand_in_stack(results, behaviour, env=env),
            }
            try:
                urls = {name: f"{s.plan.base_url}/chat/completions" for name, s in stacks.items()}
                times = asyncio.run(_alternate(urls, requests, gap_s))
            finally:
                for stack in stacks.values():
                    stack.stop()
            row = {"requests": requests}
            for name, ms in times.items():
                row[name] = {"p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90)}
            row["saved_p50_ms"] = row[BATCHED]["p50_ms"] - row[SHIPPED]["p50_ms"]
            row["saved_p90_ms"] = row[BATCHED]["p90_ms"] - row[SHIPPED]["p90_ms"]
            rows.append(row)
    return rows
