"""The Responses API's stored state and its refusals, on stand-in engines (fast).

Stored responses belong to the key that made them; store=false keeps nothing; two edges
share conversations through a real Redis; a broken stream ends in response.failed; a
store that is down refuses only the requests that need it (503).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest
import yaml
from openai import OpenAI

from devstack.processes import ManagedProcess, free_port, wait_until
from devstack.readiness import http_healthy
from tests.conftest import SCRIPTED_MODEL, RunningStack

KEYS = ("sk-tera-alice", "sk-tera-bob")


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    from devstack.stack import Stack
    from tests.conftest import _plan, scripted_args

    plan = _plan(
        tmp_path_factory.mktemp("responses-keyed"),
        1,
        scripted_args(),
        [SCRIPTED_MODEL],
        edge_env={"TERA_API_KEYS": ",".join(KEYS)},
    )
    stack = Stack(plan).start(timeout_s=60)
    try:
        yield RunningStack(stack)
    finally:
        stack.stop()


def _client(base_url: str, key: str = KEYS[0]) -> OpenAI:
    return OpenAI(base_url=base_url, api_key=key, max_retries=0)


def test_stored_response_round_trip(keyed: RunningStack) -> None:
    client = _client(keyed.base_url)
    r = client.responses.create(model=SCRIPTED_MODEL, input="hello", max_output_tokens=4)
    assert r.object == "response" and r.id.startswith("resp_") and r.store is True
    assert r.output_text and r.status == "incomplete"
    assert r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    again = client.responses.retrieve(r.id)
    assert again.id == r.id and again.output_text == r.output_text
    items = client.responses.input_items.list(r.id)
    assert [i.type for i in items.data] == ["message"]
    assert items.data[0].content[0].text == "hello"  # type: ignore[union-attr]
    deleted = client.responses.delete(r.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_another_key_sees_nothing(keyed: RunningStack) -> None:
    alice, bob = _client(keyed.base_url, KEYS[0]), _client(keyed.base_url, KEYS[1])
    r = alice.responses.create(model=SCRIPTED_MODEL, input="secret", max_output_tokens=2)
    for call in (
        lambda: bob.responses.retrieve(r.id),
        lambda: bob.responses.input_items.list(r.id),
        lambda: bob.responses.delete(r.id),
        lambda: bob.responses.create(model=SCRIPTED_MODEL, input="next", previous_response_id=r.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert alice.responses.retrieve(r.id).id == r.id


def test_store_false_keeps_nothing(keyed: RunningStack) -> None:
    client = _client(keyed.base_url)
    r = client.responses.create(model=SCRIPTED_MODEL, input="x", store=False, max_output_tokens=2)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_input_items_paginate(keyed: RunningStack) -> None:
    client = _client(keyed.base_url)
    words = [{"role": "user", "content": w} for w in ("a", "b", "c")]
    r = client.responses.create(model=SCRIPTED_MODEL, input=words, max_output_tokens=2)
    first = client.responses.input_items.list(r.id, limit=2, order="asc")
    assert [i.content[0].text for i in first.data] == ["a", "b"]  # type: ignore[union-attr]
    assert first.has_more
    rest = client.responses.input_items.list(r.id, limit=2, order="asc", after=first.last_id)
    assert [i.content[0].text for i in rest.data] == ["c"]  # type: ignore[union-attr]
    assert not rest.has_more


@pytest.mark.parametrize("tool", ["web_search", "file_search", "code_interpreter"])
def test_built_in_tools_are_a_clear_400(keyed: RunningStack, tool: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        _client(keyed.base_url).responses.create(
            model=SCRIPTED_MODEL,
            input="x",
            tools=[{"type": tool}],  # type: ignore[list-item]
        )
    assert tool in str(err.value) and "tools[0]" in str(err.value)


def test_background_and_cancel_are_refused(keyed: RunningStack) -> None:
    client = _client(keyed.base_url)
    with pytest.raises(openai.BadRequestError, match="background"):
        client.responses.create(model=SCRIPTED_MODEL, input="x", background=True)
    r = client.responses.create(model=SCRIPTED_MODEL, input="x", max_output_tokens=2)
    with pytest.raises(openai.BadRequestError, match="background"):
        client.responses.cancel(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("resp_nope")


def test_broken_stream_ends_in_response_failed(
    scripted_stack: Callable[..., RunningStack],
) -> None:
    stack = scripted_stack(behaviour={"fail_after_tokens": 3, "default_max_tokens": 20})
    events = list(
        _client(stack.base_url).responses.create(
            model=SCRIPTED_MODEL, input="x", stream=True, max_output_tokens=20
        )
    )
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.failed"
    assert "response.completed" not in types
    assert events[-1].response.error is not None  # type: ignore[union-attr]
    assert [e.sequence_number for e in events] == list(range(len(events)))


# -- Redis: two edges, one conversation store -----------------------------------------


@pytest.fixture
def redis_url() -> Iterator[str]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (scripts/test_services.sh installs it)")
    port = free_port()
    args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ping = ["redis-cli", "-p", str(port), "ping"]
    try:
        wait_until(
            lambda: subprocess.run(ping, capture_output=True).returncode == 0,
            timeout_s=10,
            what="redis",
        )
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def _catalog(path: Path, redis_url: str) -> Path:
    keys = [{"name": f"k{i}", "key": k} for i, k in enumerate(KEYS)]
    data = {"models": [{"id": SCRIPTED_MODEL}], "keys": keys, "redis": {"url": redis_url}}
    path.write_text(yaml.safe_dump(data))
    return path


def test_two_edges_share_conversations_through_redis(
    scripted_stack: Callable[..., RunningStack], tmp_path: Path, redis_url: str
) -> None:
    catalog = _catalog(tmp_path / "catalog.yaml", redis_url)
    stack = scripted_stack(edge_args=["--catalog", str(catalog)])
    port = free_port()
    router = f"127.0.0.1:{stack.stack.plan.router_port}"
    args = ["-m", "services.edge", "--port", str(port), "--router", router]
    second = ManagedProcess(
        "edge-2", [*args, "--catalog", str(catalog)], log_path=tmp_path / "edge-2.log"
    ).start()
    try:
        other = f"http://127.0.0.1:{port}/v1"
        wait_until(lambda: http_healthy(other), timeout_s=30, watch=[second], what="edge 2")
        one, two = _client(stack.base_url), _client(other)
        first = one.responses.create(model=SCRIPTED_MODEL, input="turn 1", max_output_tokens=2)
        assert two.responses.retrieve(first.id).output_text == first.output_text
        follow = two.responses.create(
            model=SCRIPTED_MODEL, input="turn 2", previous_response_id=first.id
        )
        assert follow.previous_response_id == first.id
        assert one.responses.retrieve(follow.id).id == follow.id
        with pytest.raises(openai.NotFoundError):
            _client(other, KEYS[1]).responses.retrieve(first.id)
    finally:
        second.stop()


def test_store_down_refuses_only_what_needs_it(
    scripted_stack: Callable[..., RunningStack], tmp_path: Path
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    stack = scripted_stack(edge_args=["--catalog", str(_catalog(tmp_path / "c.yaml", dead))])
    client = _client(stack.base_url)
    stateless = client.responses.create(
        model=SCRIPTED_MODEL, input="x", store=False, max_output_tokens=2
    )
    assert stateless.output_text
    for kwargs in ({}, {"previous_response_id": "resp_x", "store": False}):
        with pytest.raises(openai.InternalServerError) as err:
            client.responses.create(model=SCRIPTED_MODEL, input="x", max_output_tokens=2, **kwargs)
        assert err.value.status_code == 503
        assert json.loads(err.value.response.text)["error"]["code"] == "store_unavailable"
