"""A short, bounded load on a stack at 127.0.0.1 that touches every metric the dashboards
read: streamed chat and completions for two keys (one over its request limit: 429s), a
request the edge rejects (400) and one speech request."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import yaml

from services.catalog.schema import sha256_hex
from tests.conftest import SCRIPTED_MODEL

KEYS = {"team-a": "sk-obs-team-a", "tight": "sk-obs-tight"}
WAVES, PER_WAVE, CONCURRENCY = 3, 12, 4


def catalog(path: Path) -> Path:
    keys = [
        {
            "name": "team-a",
            "sha256": sha256_hex(KEYS["team-a"]),
            "limits": {"requests_per_minute": 6000, "tokens_per_minute": 1_000_000},
        },
        {
            "name": "tight",
            "sha256": sha256_hex(KEYS["tight"]),
            "limits": {"requests_per_minute": 2},
        },
    ]
    path.write_text(yaml.safe_dump({"models": [{"id": SCRIPTED_MODEL}], "keys": keys}))
    return path


async def _post(session: aiohttp.ClientSession, url: str, key: str, body: dict) -> int:
    headers = {"Authorization": f"Bearer {KEYS[key]}"}
    async with session.post(url, json=body, headers=headers) as r:
        await r.read()
        return r.status


async def drive(base_url: str) -> list[int]:
    """Three waves a second apart, so that rates see several scrapes."""
    chat = {
        "model": SCRIPTED_MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8,
        "stream": True,
    }
    completion = {"model": SCRIPTED_MODEL, "prompt": "hi", "max_tokens": 4, "stream": True}
    limit = asyncio.Semaphore(CONCURRENCY)
    statuses: list[int] = []

    async def one(session: aiohttp.ClientSession, path: str, key: str, body: dict) -> None:
        async with limit:
            statuses.append(await _post(session, f"{base_url}/{path}", key, body))

    async with aiohttp.ClientSession() as session:
        for wave in range(WAVES):
            calls = [one(session, "chat/completions", "team-a", chat) for _ in range(PER_WAVE)]
            calls += [one(session, "completions", "team-a", completion)]
            calls += [one(session, "chat/completions", "tight", chat) for _ in range(2)]
            if wave == 0:
                calls += [one(session, "chat/completions", "team-a", {"model": SCRIPTED_MODEL})]
                speech = {"model": SCRIPTED_MODEL, "input": "hi", "voice": "joe"}
                calls += [one(session, "audio/speech", "team-a", speech)]
            await asyncio.gather(*calls)
            await asyncio.sleep(1)
    assert 429 in statuses and 400 in statuses and statuses.count(200) >= WAVES * PER_WAVE
    return statuses
