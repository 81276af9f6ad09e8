"""When the model's stream breaks, through the real edge, router and a stand-in engine
told to fail: a stream that already sent tokens ends with an error event and a choice
finishing "error" (never [DONE], never "stop"/"length"); a non-streaming request gets a
502; a failure before any token is a plain error response; a stream gone quiet for
longer than the idle timeout ends the same way, as 504 stream_idle_timeout."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import SCRIPTED_MODEL, RunningStack

StackFactory = Callable[..., RunningStack]
BODIES = {
    "chat/completions": {"model": SCRIPTED_MODEL, "messages": [{"role": "user", "content": "hi"}]},
    "completions": {"model": SCRIPTED_MODEL, "prompt": "hi"},
}


def _text(payload: dict) -> str:
    choice = payload["choices"][0] if payload.get("choices") else {}
    return (choice.get("delta") or {}).get("content") or choice.get("text") or ""


async def _post(stack: RunningStack, endpoint: str, **extra: object) -> tuple[int, str]:
    body = {**BODIES[endpoint], "max_tokens": 10, **extra}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{stack.base_url}/{endpoint}", json=body) as r,
    ):
        return r.status, await r.text()


def _events(raw: str) -> list[str]:
    return [e.removeprefix("data: ") for e in raw.split("\n\n") if e.strip()]


@pytest.fixture(params=["per_call", "mux", "stream"])
def router_transport(request: pytest.FixtureRequest) -> str:
    """The edge's router_transport: a stream's failures read the same over each."""
    return request.param


@pytest.fixture
def breaks_after_3(scripted_stack: StackFactory, router_transport: str) -> RunningStack:
    return scripted_stack(
        behaviour={"fail_after_tokens": 3, "tokens_per_second": 100},
        edge_args=["--router-transport", router_transport],
    )


@pytest.fixture
def breaks_at_once(scripted_stack: StackFactory) -> RunningStack:
    return scripted_stack(behaviour={"fail_before_first": True})


@pytest.mark.parametrize("endpoint", list(BODIES))
async def test_stream_broken_mid_answer_ends_with_an_error_event(
    breaks_after_3: RunningStack, endpoint: str
) -> None:
    status, raw = await _post(breaks_after_3, endpoint, stream=True)
    assert status == 200, "the stream had begun"
    events = _events(raw)
    assert "[DONE]" not in events, "a broken stream never claims to be complete"
    payloads = [json.loads(e) for e in events]
    error = payloads[-1]["error"]
    assert error["type"] == "server_error"
    assert "scripted failure after 3 tokens" in error["message"]
    assert "".join(_text(p) for p in payloads[:-1]) == "tok0 tok1 tok2 "
    finishes = [c["finish_reason"] for p in payloads[:-1] for c in p["choices"]]
    assert [f for f in finishes if f] == ["error"]


@pytest.mark.parametrize("endpoint", list(BODIES))
async def test_non_streaming_request_whose_stream_breaks_is_502(
    breaks_after_3: RunningStack, endpoint: str
) -> None:
    status, raw = await _post(breaks_after_3, endpoint)
    assert status == 502
    error = json.loads(raw)["error"]
    assert error["type"] == "server_error"
    assert "scripted failure after 3 tokens" in error["message"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("endpoint", list(BODIES))
async def test_failure_before_the_first_token_is_a_plain_502(
    breaks_at_once: RunningStack, endpoint: str, stream: bool
) -> None:
    status, raw = await _post(breaks_at_once, endpoint, stream=stream)
    assert status == 502, raw
    error = json.loads(raw)["error"]
    assert error["type"] == "server_error"
    assert "scripted failure before first token" in error["message"]


@pytest.fixture
def goes_quiet(scripted_stack: StackFactory, tmp_path: Path, router_transport: str) -> RunningStack:
    """The first token at once, the next after 4 s; the edge waits 1 s between messages."""
    config = tmp_path / "edge.yaml"
    config.write_text(f"stream_idle_timeout_s: 1.0\nrouter_transport: {router_transport}\n")
    return scripted_stack(
        behaviour={"tokens_per_second": 0.25}, edge_args=["--config", str(config)]
    )


@pytest.mark.parametrize("endpoint", list(BODIES))
async def test_stream_gone_quiet_ends_with_an_idle_timeout(
    goes_quiet: RunningStack, endpoint: str
) -> None:
    status, raw = await _post(goes_quiet, endpoint, stream=True, max_tokens=3)
    assert status == 200
    payloads = [json.loads(e) for e in _events(raw)]
    assert payloads[-1]["error"]["code"] == "stream_idle_timeout"
    assert "".join(_text(p) for p in payloads[:-1]) == "tok0 "
    status, raw = await _post(goes_quiet, endpoint, max_tokens=3)
    assert status == 504
    assert json.loads(raw)["error"]["code"] == "stream_idle_timeout"
