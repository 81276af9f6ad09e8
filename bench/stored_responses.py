"""Part: the edge latency a stored response adds over a stateless one.

POST /v1/responses with store:true vs store:false, non-streaming, a short output from
the stand-in engine (as fast as the loop allows), one request at a time. The two kinds
alternate A B B A so drift (a warming cache, a busy neighbour) falls on both evenly.
Run once per store the edge offers without a server: SQLite (what `tera run` uses) and
memory. Stored minus stateless is what writing the record costs on the request's path.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from bench.common import STAND_IN_MODEL, percentile, stand_in_stack

PAIRS = 150  # ABBA rounds of 2+2: 300 requests of each kind per store
WARMUP = 20
MAX_OUTPUT_TOKENS = 16
ABBA = (True, False, False, True)


async def _timed(session: aiohttp.ClientSession, url: str, store: bool) -> float:
    body = {
        "model": STAND_IN_MODEL,
        "input": "Say hello",
        "max_output_tokens": MAX_OUTPUT_TOKENS,
        "store": store,
    }
    start = time.perf_counter()
    async with session.post(url, json=body) as r:
        await r.read()
        elapsed = time.perf_counter() - start
        if r.status != 200:
            raise RuntimeError(f"POST /v1/responses answered {r.status}: {await r.text()}")
    return elapsed * 1000


async def _measure(base_url: str, pairs: int) -> dict[bool, list[float]]:
    url = f"{base_url}/responses"
    times: dict[bool, list[float]] = {True: [], False: []}
    async with aiohttp.ClientSession() as session:
        for i in range(WARMUP):
            await _timed(session, url, store=i % 2 == 0)
        for _ in range(pairs):
            for store in ABBA:
                times[store].append(await _timed(session, url, store))
    return times


def _row(store_kind: str, times: dict[bool, list[float]]) -> dict:
    stored, stateless = times[True], times[False]
    p50_stored, p50_stateless = percentile(stored, 50), percentile(stateless, 50)
    p99_stored, p99_stateless = percentile(stored, 99), percentile(stateless, 99)
    return {
        "store": store_kind,
        "requests_each": len(stored),
        "stored_p50_ms": p50_stored,
        "stateless_p50_ms": p50_stateless,
        "added_p50_ms": p50_stored - p50_stateless,
        "p50_ratio": p50_stored / p50_stateless,
        "stored_p99_ms": p99_stored,
        "stateless_p99_ms": p99_stateless,
        "p99_ratio": p99_stored / p99_stateless,
    }


def run(results: Path, pairs: int = PAIRS) -> list[dict]:
    rows = []
    for store_kind in ("sqlite", "memory"):
        db = results / "stored-responses.db" if store_kind == "sqlite" else None
        stack = stand_in_stack(results, {"tokens_per_second": 0}, responses_db=db)
        try:
            rows.append(_row(store_kind, asyncio.run(_measure(stack.plan.base_url, pairs))))
        finally:
            stack.stop()
    return rows
