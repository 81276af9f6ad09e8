"""Load by tenant for the fair-sharing tests and bench: each request's status, time to
first token, Retry-After and time to the answer, per API key."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp

from tests.conftest import SCRIPTED_MODEL


@dataclass
class Result:
    status: int
    seconds: float  # to the end of the answer (or the refusal)
    ttft: float | None = None
    retry_after: float | None = None
    ended: float = field(default_factory=time.monotonic)


@dataclass
class TenantLoad:
    results: list[Result] = field(default_factory=list)

    @property
    def ok(self) -> list[Result]:
        return [r for r in self.results if r.status == 200]

    @property
    def shed(self) -> list[Result]:
        return [r for r in self.results if r.status == 429]

    def served_between(self, start: float, end: float) -> int:
        return sum(start <= r.ended <= end for r in self.ok)

    def ttfts(self) -> list[float]:
        return [r.ttft for r in self.ok if r.ttft is not None]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))]


async def one(
    session: aiohttp.ClientSession,
    base: str,
    key: str,
    max_tokens: int,
    model: str = SCRIPTED_MODEL,
) -> Result:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {key}"}
    async with session.post(f"{base}/chat/completions", json=body, headers=headers) as response:
        if response.status != 200:
            await response.read()
            after = response.headers.get("Retry-After")
            return Result(
                response.status, time.monotonic() - started, None, float(after) if after else None
            )
        ttft = None
        async for line in response.content:
            if ttft is None and _has_text(line):
                ttft = time.monotonic() - started
        return Result(200, time.monotonic() - started, ttft)


def _has_text(line: bytes) -> bool:
    """A chunk with text: the first chunk carries the role and empty content, which is
    not a token (any engine, stand-in or vLLM)."""
    return b'"content":"' in line and b'"content":""' not in line


async def flood(
    base: str,
    key: str,
    *,
    workers: int,
    seconds: float,
    max_tokens: int,
    backoff_s: float = 0.2,
    model: str = SCRIPTED_MODEL,
) -> TenantLoad:
    """`workers` closed loops for `seconds`; a refused worker waits backoff_s (a flooder
    that ignores Retry-After, but does not spin)."""
    load = TenantLoad()
    end = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < end:
            result = await one(session, base, key, max_tokens, model)
            load.results.append(result)
            if result.status != 200:
                await asyncio.sleep(backoff_s)

    async with _session() as session:
        await asyncio.gather(*(worker(session) for _ in range(workers)))
    return load


async def steady(
    base: str,
    key: str,
    *,
    every_s: float,
    seconds: float,
    max_tokens: int,
    model: str = SCRIPTED_MODEL,
) -> TenantLoad:
    """One request every `every_s` (open loop), for `seconds`."""
    load = TenantLoad()

    async def send(session: aiohttp.ClientSession) -> None:
        load.results.append(await one(session, base, key, max_tokens, model))

    async with _session() as session:
        tasks = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            tasks.append(asyncio.create_task(send(session)))
            await asyncio.sleep(every_s)
        await asyncio.gather(*tasks)
    return load


async def burst(
    base: str, key: str, *, requests: int, max_tokens: int, model: str = SCRIPTED_MODEL
) -> TenantLoad:
    """`requests` at once."""
    async with _session() as session:
        results = await asyncio.gather(
            *(one(session, base, key, max_tokens, model) for _ in range(requests))
        )
    return TenantLoad(list(results))


def _session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))
