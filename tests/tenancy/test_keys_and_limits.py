"""Keys as tenants, through the real edge, router and stand-in engines: aliases,
allowlists, requests/tokens/concurrency limits with OpenAI's headers, usage, and
limits shared by two edges through a real Redis."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import openai
import pytest
import yaml

from devstack.processes import ManagedProcess, free_port, wait_until
from devstack.readiness import http_healthy
from services.catalog.schema import sha256_hex
from tests.conftest import RunningStack

CHAT_MODEL, OTHER_MODEL = "org/chat-a", "org/chat-b"
KEYS = {
    "limited": "sk-limited",
    "tokens": "sk-tokens",
    "narrow": "sk-narrow",
    "single": "sk-single",
    "free": "sk-free",
}
ADMIN = "sk-admin-0001"


def _catalog(path: Path, redis_url: str | None = None) -> Path:
    data = {
        "models": [
            {"id": CHAT_MODEL, "aliases": ["gpt-4o-mini"], "max_tokens": {"max": 200}},
            {"id": OTHER_MODEL},
        ],
        "keys": [
            {
                "name": "limited",
                "sha256": sha256_hex(KEYS["limited"]),
                "limits": {"requests_per_minute": 3},
            },
            {
                "name": "tokens",
                "sha256": sha256_hex(KEYS["tokens"]),
                "limits": {"tokens_per_minute": 100},
            },
            {"name": "narrow", "sha256": sha256_hex(KEYS["narrow"]), "models": [OTHER_MODEL]},
            {
                "name": "single",
                "sha256": sha256_hex(KEYS["single"]),
                "limits": {"max_concurrent": 1},
            },
            {"name": "free", "key": KEYS["free"]},
        ],
        "admin": {"sha256": sha256_hex(ADMIN)},
    }
    if redis_url:
        data["redis"] = {"url": redis_url}
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def tenants(scripted_stack: Callable[..., RunningStack], tmp_path: Path) -> RunningStack:
    behaviours = [{"tokens_per_second": 10}, {}]
    return scripted_stack(
        engines=2,
        model_ids=[CHAT_MODEL, OTHER_MODEL],
        per_engine_args=[
            ["--model-id", m, "--scripted", json.dumps(b)]
            for m, b in zip((CHAT_MODEL, OTHER_MODEL), behaviours, strict=True)
        ],
        edge_args=["--catalog", str(_catalog(tmp_path / "catalog.yaml"))],
    )


def _seconds(reset: str) -> float:
    """OpenAI's reset format ("1m0s", "19.5s") in seconds."""
    minutes, _, seconds = reset.rpartition("m")
    return 60 * int(minutes or 0) + float(seconds.removesuffix("s"))


def _client(stack: RunningStack, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=stack.base_url, api_key=KEYS.get(key, key), max_retries=0)


def _base(stack: RunningStack | str) -> str:
    return stack if isinstance(stack, str) else stack.base_url


async def _chat(
    stack: RunningStack | str,
    key: str,
    model: str = "gpt-4o-mini",
    max_tokens: int = 3,
    **extra: object,
) -> tuple[int, dict, dict]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        **extra,
    }
    headers = {"Authorization": f"Bearer {KEYS.get(key, key)}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{_base(stack)}/chat/completions", json=body, headers=headers) as r,
    ):
        return r.status, dict(r.headers), await r.json()


async def test_alias_works_with_the_sdk_and_reports_the_canonical_id(tenants: RunningStack) -> None:
    r = await _client(tenants, "free").chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert r.model == CHAT_MODEL and r.choices[0].message.content
    listed = {m.id: m.model_dump() for m in (await _client(tenants, "free").models.list()).data}
    assert listed["gpt-4o-mini"]["alias_of"] == CHAT_MODEL
    assert CHAT_MODEL in listed and OTHER_MODEL in listed


async def test_max_tokens_cap_from_the_catalog(tenants: RunningStack) -> None:
    status, _, body = await _chat(tenants, "free", max_tokens=201)
    assert status == 400 and body["error"]["param"] == "max_tokens"


async def test_fourth_request_in_a_minute_is_429_with_openai_headers(tenants: RunningStack) -> None:
    for i in range(3):
        status, headers, _ = await _chat(tenants, "limited")
        assert status == 200
        assert headers["x-ratelimit-limit-requests"] == "3"
        assert headers["x-ratelimit-remaining-requests"] == str(2 - i)
    status, headers, body = await _chat(tenants, "limited")
    assert status == 429
    assert body["error"]["type"] == "rate_limit_error"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    # The schedule runs a full minute ahead (3 requests x 20 s), less the time taken.
    assert 50 <= _seconds(headers["x-ratelimit-reset-requests"]) <= 60
    retry_after = int(headers["Retry-After"])
    assert 1 <= retry_after <= 20
    with pytest.raises(openai.RateLimitError):
        await _client(tenants, "limited").chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
    await asyncio.sleep(retry_after + 0.5)  # one request's worth of the window has passed
    status, _, _ = await _chat(tenants, "limited")
    assert status == 200


async def test_tokens_per_minute(tenants: RunningStack) -> None:
    status, headers, _ = await _chat(tenants, "tokens", max_tokens=60)
    assert status == 200 and headers["x-ratelimit-limit-tokens"] == "100"
    status, headers, body = await _chat(tenants, "tokens", max_tokens=60)
    assert status == 429 and "tokens per minute" in body["error"]["message"]
    assert int(headers["x-ratelimit-remaining-tokens"]) < 60


async def test_allowlist_hides_other_models(tenants: RunningStack) -> None:
    status, _, body = await _chat(tenants, "narrow", model="gpt-4o-mini")
    assert status == 404 and body["error"]["code"] == "model_not_found"
    status, _, _ = await _chat(tenants, "narrow", model=OTHER_MODEL)
    assert status == 200
    ids = [m.id for m in (await _client(tenants, "narrow").models.list()).data]
    assert ids == [OTHER_MODEL]


async def test_concurrent_streams_limit(tenants: RunningStack) -> None:
    slow = asyncio.create_task(_chat(tenants, "single", max_tokens=15))  # 1.5 s at 10 tok/s
    await asyncio.sleep(0.4)
    status, headers, body = await _chat(tenants, "single")
    assert status == 429 and body["error"]["code"] == "concurrency_limit_exceeded"
    assert headers["Retry-After"]
    assert (await slow)[0] == 200
    assert (await _chat(tenants, "single"))[0] == 200


async def test_usage_per_key_and_model(tenants: RunningStack) -> None:
    for _ in range(2):
        assert (await _chat(tenants, "free", max_tokens=4))[0] == 200
    assert (await _chat(tenants, "free", model=OTHER_MODEL, max_tokens=2))[0] == 200
    assert (await _chat(tenants, "free", max_tokens=999))[0] == 400
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{tenants.ops_url}/admin/usage",
            headers={"Authorization": f"Bearer {KEYS['free']}"},
        ) as r:
            assert r.status == 401, "tenant keys are not admin keys"
        async with session.get(
            f"{tenants.ops_url}/admin/usage",
            headers={"Authorization": f"Bearer {ADMIN}"},
        ) as r:
            usage = (await r.json())["keys"]["free"]
        async with session.get(f"{tenants.ops_url}/metrics") as r:
            metrics = await r.text()
    assert usage[CHAT_MODEL]["requests"] == 3 and usage[CHAT_MODEL]["errors"] == 1
    assert usage[CHAT_MODEL]["completion_tokens"] == 8
    assert usage[OTHER_MODEL] == {
        "requests": 1,
        "prompt_tokens": usage[OTHER_MODEL]["prompt_tokens"],
        "completion_tokens": 2,
        "errors": 0,
    }
    assert f'tera_key_requests_total{{key="free",model="{CHAT_MODEL}",status="200"}} 2.0' in metrics
    assert all(k not in metrics for k in KEYS.values())


# -- limits shared by two edges through Redis ---------------------------------------


async def test_two_edges_share_one_limit_through_redis(
    scripted_stack: Callable[..., RunningStack], tmp_path: Path, redis_url: str
) -> None:
    catalog = _catalog(tmp_path / "catalog.yaml", redis_url)
    stack = scripted_stack(
        model_ids=[CHAT_MODEL],
        per_engine_args=[["--model-id", CHAT_MODEL]],
        edge_args=["--catalog", str(catalog)],
    )
    port = free_port()
    second = ManagedProcess(
        "edge-2",
        [
            "-m",
            "services.edge",
            "--port",
            str(port),
            "--router",
            f"127.0.0.1:{stack.stack.plan.router_port}",
            "--catalog",
            str(catalog),
        ],
        log_path=tmp_path / "edge-2.log",
    ).start()
    try:
        other = f"http://127.0.0.1:{port}/v1"
        wait_until(lambda: http_healthy(other), timeout_s=30, watch=[second], what="edge 2")
        statuses = [(await _chat(stack, "limited"))[0], (await _chat(stack, "limited"))[0]]
        statuses += [(await _chat(other, "limited"))[0], (await _chat(other, "limited"))[0]]
        assert statuses == [200, 200, 200, 429]
    finally:
        second.stop()


async def test_redis_down_fails_open(
    scripted_stack: Callable[..., RunningStack], tmp_path: Path
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    stack = scripted_stack(
        model_ids=[CHAT_MODEL],
        per_engine_args=[["--model-id", CHAT_MODEL]],
        edge_args=["--catalog", str(_catalog(tmp_path / "c.yaml", dead))],
    )
    started = time.monotonic()
    statuses = [(await _chat(stack, "limited"))[0] for _ in range(5)]
    assert statuses == [200] * 5, "limits are skipped, traffic flows"
    assert time.monotonic() - started < 5
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{stack.ops_url}/metrics") as r,
    ):
        metrics = await r.text()
    assert "tera_edge_limiter_failures_total 5.0" in metrics, "each failed store call counts"
