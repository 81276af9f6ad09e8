"""A known model with no ready replica gets 503 + Retry-After (which clients retry), never
404 (which they do not): during start-up, while its only replica restarts, with its DNS
fleet scaled to zero, and for a catalog model nothing serves. An unknown model is still
404. Real processes; stand-in engines. Another model is ready throughout, as the speech
model is in `tera run`: the router then knows enough to say 404, and must not."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml

from devstack.engine_args import scripted_engine_args
from devstack.processes import ManagedProcess, free_port
from tests.conftest import SCRIPTED_MODEL
from tests.devstack.cli import tera_run
from tests.faults.dns import DnsServer
from tests.faults.fleet import ROUTER_SETTINGS
from tests.faults.gateway import gateway

OTHER = "tera-test/other"
UNKNOWN = "tera-test/no-such-model"


def _engine(
    logs: Path, model: str, port: int, host: str = "127.0.0.1", **behaviour: Any
) -> ManagedProcess:
    return ManagedProcess(
        f"engine {model}@{host}:{port}",
        [
            *("-m", "services.engine", "--host", host, "--port", str(port)),
            *scripted_engine_args(model, **behaviour),
        ],
        log_path=logs / f"engine-{host}-{port}.log",
    ).start()


def _router_args(tmp_path: Path, **fields: Any) -> list[str]:
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump({**ROUTER_SETTINGS, **fields}))
    return ["--config", str(path)]


async def _chat(base: str, model: str) -> tuple[int, dict[str, str], dict]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base}/chat/completions", json=body) as r,
    ):
        return r.status, dict(r.headers), await r.json()


async def _get(base: str, path: str) -> tuple[int, dict]:
    url = base.removesuffix("/v1") + path
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        return r.status, await r.json()


async def _statuses(base: str) -> dict[str, str]:
    return {m["id"]: m["status"] for m in (await _get(base, "/v1/models"))[1]["data"]}


async def _wait_for_status(base: str, model: str, status: str, timeout_s: float = 20) -> None:
    async with asyncio.timeout(timeout_s):
        while (await _statuses(base)).get(model) != status:
            await asyncio.sleep(0.1)


def _assert_come_back_later(status: int, headers: dict[str, str], body: dict) -> None:
    assert status == 503, (status, body)
    assert int(headers["Retry-After"]) >= 1
    assert body["error"]["code"] == "no_replica" and body["error"]["type"] == "server_error"


async def _through_sdk_retries(base: str, model: str) -> str:
    """The OpenAI SDK's own retries (503 + Retry-After) carry the request through."""
    client = openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=12)
    reply = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    return reply.choices[0].message.content or ""


async def _no_404_until(done: asyncio.Task, base: str) -> list[int]:
    """Requests the model while `done` runs; every answer is 200 or 503 + Retry-After."""
    seen = []
    while not done.done():
        status, headers, body = await _chat(base, SCRIPTED_MODEL)
        seen.append(status)
        if status != 200:
            _assert_come_back_later(status, headers, body)
        await asyncio.sleep(0.1)
    return seen


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[list[ManagedProcess]]:
    started: list[ManagedProcess] = []
    yield started
    for engine in started:
        engine.stop()


async def test_start_up_503_not_404_and_readiness(tmp_path: Path, engines: list) -> None:
    other, loading = free_port(), free_port()
    engines += [
        _engine(tmp_path, OTHER, other),
        _engine(tmp_path, SCRIPTED_MODEL, loading, startup_delay_s=5),
    ]
    replicas = [f"127.0.0.1:{other}", f"127.0.0.1:{loading}"]
    router = _router_args(tmp_path, replicas=replicas)
    with gateway(tmp_path, router, ready_models=[OTHER], watch=engines) as (_, base):
        await _wait_for_status(base, SCRIPTED_MODEL, "loading")
        _assert_come_back_later(*await _chat(base, SCRIPTED_MODEL))
        assert (await _chat(base, UNKNOWN))[0] == 404
        assert (await _chat(base, OTHER))[0] == 200
        status, ready = await _get(base, "/ready")
        assert status == 503
        assert ready["models"] == {OTHER: "ready", SCRIPTED_MODEL: "loading"}
        sdk = asyncio.create_task(_through_sdk_retries(base, SCRIPTED_MODEL))
        assert 503 in await _no_404_until(sdk, base)
        assert sdk.result().startswith("tok0")
        assert (await _get(base, "/ready"))[0] == 200


async def test_a_known_model_whose_engine_is_not_listening_yet_is_503(
    tmp_path: Path, engines: list
) -> None:
    """vLLM imports for seconds before its engine listens: the router, told which models
    exist (tera run says), answers 503 for them until then, not 404."""
    other, later = free_port(), free_port()
    engines.append(_engine(tmp_path, OTHER, other))
    replicas = [f"127.0.0.1:{other}", f"127.0.0.1:{later}"]
    router = [*_router_args(tmp_path, replicas=replicas), "--known-model", SCRIPTED_MODEL]
    with gateway(tmp_path, router, ready_models=[OTHER], watch=engines) as (_, base):
        _assert_come_back_later(*await _chat(base, SCRIPTED_MODEL))
        assert (await _chat(base, UNKNOWN))[0] == 404
        assert (await _statuses(base))[SCRIPTED_MODEL] == "unavailable"
        sdk = asyncio.create_task(_through_sdk_retries(base, SCRIPTED_MODEL))
        await asyncio.sleep(1.0)
        engines.append(_engine(tmp_path, SCRIPTED_MODEL, later))
        assert (await sdk).startswith("tok0")


async def test_only_replica_killed_and_restarting_503_not_404(tmp_path: Path) -> None:
    behaviours = [{"model_id": OTHER}, {"startup_delay_s": 2}]
    # The restart waits 4 s: long enough for the router to see the replica down and the
    # edge's 2 s model-list cache to show it, on a loaded machine.
    with tera_run(tmp_path, behaviours, args=["--restart-backoff", "4"]) as run:
        os.kill(run.pids(run.engine(1))[0], signal.SIGKILL)
        await _wait_for_status(run.base_url, SCRIPTED_MODEL, "unavailable")
        sdk = asyncio.create_task(_through_sdk_retries(run.base_url, SCRIPTED_MODEL))
        seen = await _no_404_until(sdk, run.base_url)
        assert 503 in seen and sdk.result().startswith("tok0")
        assert (await _chat(run.base_url, UNKNOWN))[0] == 404
        run.wait_for_output(f"{run.engine(1)} restarted")


async def test_dns_fleet_scaled_to_zero_503_not_404(tmp_path: Path, engines: list) -> None:
    other, port = free_port(), free_port()
    engines += [
        _engine(tmp_path, OTHER, other),
        _engine(tmp_path, SCRIPTED_MODEL, port, "127.0.0.2"),
    ]
    with DnsServer("engines.tera.test") as dns:
        dns.addresses = ["127.0.0.2"]
        router = _router_args(
            tmp_path,
            replicas=[f"127.0.0.1:{other}"],
            dns=[f"engines.tera.test:{port}"],
            dns_server=f"127.0.0.1:{dns.port}",
            dns_refresh_s=0.2,
        )
        ready = [OTHER, SCRIPTED_MODEL]
        with gateway(tmp_path, router, ready_models=ready, watch=engines) as (_, base):
            dns.addresses = []  # scaled to zero
            await _wait_for_status(base, SCRIPTED_MODEL, "unavailable")
            _assert_come_back_later(*await _chat(base, SCRIPTED_MODEL))
            assert (await _chat(base, UNKNOWN))[0] == 404
            assert (await _get(base, "/ready"))[0] == 503
            sdk = asyncio.create_task(_through_sdk_retries(base, SCRIPTED_MODEL))
            await asyncio.sleep(1.5)
            dns.addresses = ["127.0.0.2"]  # scaled back up
            assert (await sdk).startswith("tok0")


async def test_catalog_model_with_no_replica_is_503_and_listed(
    tmp_path: Path, engines: list
) -> None:
    port = free_port()
    engines.append(_engine(tmp_path, OTHER, port))
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"models": [{"id": OTHER}, {"id": SCRIPTED_MODEL}]}))
    router = _router_args(tmp_path, replicas=[f"127.0.0.1:{port}"])
    edge = ["--catalog", str(catalog)]
    with gateway(tmp_path, router, ready_models=[OTHER], watch=engines, edge_args=edge) as (
        _,
        base,
    ):
        _assert_come_back_later(*await _chat(base, SCRIPTED_MODEL))
        assert (await _chat(base, UNKNOWN))[0] == 404
        assert await _statuses(base) == {OTHER: "ready", SCRIPTED_MODEL: "unavailable"}
        status, ready = await _get(base, "/ready")
        assert status == 503 and ready["models"][SCRIPTED_MODEL] == "unavailable"
