"""Limits kept in a real Redis, through the real edge, router and a stand-in engine:
tokens per minute (reserve, then settle with the real count), concurrent streams (acquire
and release), a client that disconnects mid-stream giving both back, and Redis going
down (fail open, counted) and coming back without the limits drifting."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from services.catalog.schema import sha256_hex
from tests.conftest import RunningStack
from tests.tenancy.conftest import RedisServer

MODEL = "org/chat-a"
SLOW = {"tokens_per_second": 10}
KEYS = {"tokens": "sk-tokens", "single": "sk-single", "both": "sk-both"}
LIMITS = {
    "tokens": {"tokens_per_minute": 100},
    "single": {"max_concurrent": 1},
    "both": {"tokens_per_minute": 100, "max_concurrent": 1},
}


def _catalog(path: Path, redis_url: str) -> Path:
    keys = [
        {"name": name, "sha256": sha256_hex(KEYS[name]), "limits": limits}
        for name, limits in LIMITS.items()
    ]
    # A generous timeout: a loaded test machine must not fail the store open by itself.
    redis = {"url": redis_url, "timeout_s": 2.0}
    path.write_text(yaml.safe_dump({"models": [{"id": MODEL}], "keys": keys, "redis": redis}))
    return path


@pytest.fixture
def gateway(
    scripted_stack: Callable[..., RunningStack], tmp_path: Path, redis_server: RedisServer
) -> RunningStack:
    return scripted_stack(
        model_ids=[MODEL],
        per_engine_args=[["--model-id", MODEL, "--scripted", json.dumps(SLOW)]],
        edge_args=["--catalog", str(_catalog(tmp_path / "catalog.yaml", redis_server.url))],
    )


async def _chat(stack: RunningStack, key: str, max_tokens: int) -> tuple[int, dict, dict]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {KEYS[key]}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{stack.base_url}/chat/completions",
            json={**body, "max_tokens": max_tokens},
            headers=headers,
        ) as r,
    ):
        return r.status, dict(r.headers), await r.json()


def _limiter_failures(stack: RunningStack) -> float:
    url = f"{stack.ops_url}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "tera_edge_limiter_failures_total":
                return sample.value
    raise AssertionError("tera_edge_limiter_failures_total is not exported")


async def test_tokens_per_minute_in_redis(gateway: RunningStack, redis_server: RedisServer) -> None:
    # 1 s per request at 10 tokens/s; reserves 1 + 1 + 10 (estimate) and settles at
    # 5 + 10 (the stand-in's count), so about 15 of the 100 are used per request.
    for _ in range(2):
        status, headers, _ = await _chat(gateway, "tokens", max_tokens=10)
        assert status == 200
        assert headers["x-ratelimit-limit-tokens"] == "100"
    assert redis_server.cli("exists", "tera:limit:tok:tokens") == "1", "state is in Redis"
    status, headers, body = await _chat(gateway, "tokens", max_tokens=80)
    assert status == 429, "15 + 15 used, 82 more do not fit in 100"
    assert "tokens per minute" in body["error"]["message"]
    remaining = int(headers["x-ratelimit-remaining-tokens"])
    assert 60 <= remaining <= 75, remaining  # 100 - 2 x 15, plus what refilled meanwhile
    assert _limiter_failures(gateway) == 0, "every store call went through"


async def test_concurrent_streams_in_redis(
    gateway: RunningStack, redis_server: RedisServer
) -> None:
    slow = asyncio.create_task(_chat(gateway, "single", max_tokens=15))  # 1.5 s
    await asyncio.sleep(0.6)
    assert redis_server.cli("get", "tera:limit:con:single") == "1"
    status, _, body = await _chat(gateway, "single", max_tokens=2)
    assert status == 429 and body["error"]["code"] == "concurrency_limit_exceeded"
    assert (await slow)[0] == 200
    assert redis_server.cli("get", "tera:limit:con:single") == "0", "released"
    assert (await _chat(gateway, "single", max_tokens=2))[0] == 200
    assert _limiter_failures(gateway) == 0


async def test_disconnect_frees_the_slot_and_the_token_reservation(
    gateway: RunningStack, redis_server: RedisServer
) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    headers = {"Authorization": f"Bearer {KEYS['both']}"}
    async with aiohttp.ClientSession() as session:
        # Reserves 2 + 80 of the key's 100 tokens for an 8 s stream.
        response = await session.post(
            f"{gateway.base_url}/chat/completions",
            json={**body, "max_tokens": 80},
            headers=headers,
        )
        assert response.status == 200
        for _ in range(3):
            await response.content.readline()
        assert redis_server.cli("get", "tera:limit:con:both") == "1"
        response.close()  # gone after about 0.2 s of 8
    for _ in range(100):
        if redis_server.cli("get", "tera:limit:con:both") == "0":
            break
        await asyncio.sleep(0.05)
    assert redis_server.cli("get", "tera:limit:con:both") == "0", "the slot came back"
    # Had the 82 reserved tokens not come back, 82 more would not fit in 100.
    status, headers, _ = await _chat(gateway, "both", max_tokens=80)
    assert status == 200, "the slot and the reservation came back"


async def test_redis_down_fails_open_counts_and_recovers_without_drift(
    gateway: RunningStack, redis_server: RedisServer
) -> None:
    before = _limiter_failures(gateway)
    redis_server.stop()
    # Admitted without a slot while Redis is down; its release comes after Redis is back.
    during = asyncio.create_task(_chat(gateway, "single", max_tokens=20))  # 2 s
    await asyncio.sleep(0.5)
    assert _limiter_failures(gateway) > before, "the outage is counted"
    redis_server.start()  # back, empty
    assert (await during)[0] == 200
    assert redis_server.cli("get", "tera:limit:con:single") in ("", "0"), "no phantom release"
    # The limit is still 1 concurrent stream, not 2.
    slow = asyncio.create_task(_chat(gateway, "single", max_tokens=15))
    await asyncio.sleep(0.6)
    status, _, body = await _chat(gateway, "single", max_tokens=2)
    assert status == 429 and body["error"]["code"] == "concurrency_limit_exceeded"
    assert (await slow)[0] == 200
