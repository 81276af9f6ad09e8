"""Mid-stream resume with stand-in engines: replicas cut streams after k tokens, and the
caller must still get the unfailed answer byte for byte, with exact usage.

Every replica of a fleet fails each call after k tokens (a continuation counts afresh),
so a stream of 2k tokens is cut exactly once and one of 3k exactly twice. The reference
is the same stand-in engine, in process and unfailed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import aiohttp
import grpc
import pytest
import yaml

from devstack.processes import free_port
from services.engine.backends.scripted import ScriptedBackend
from services.engine.config import EngineConfig
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc
from tests.conftest import SCRIPTED_MODEL, RunningStack
from tests.faults.fleet import BOTH_TRANSPORTS, ROUTER_SETTINGS, router_metric

pytestmark = BOTH_TRANSPORTS

# Byte-sliced tokens: é (2 bytes) and 😀 (4 bytes) are split across tokens.
UTF8 = {"token_text": "é{i}😀 ", "bytes_per_token": 3, "tokens_per_second": 200}
PROMPT = "Tell me a story."


async def reference(behaviour: dict, body: dict) -> dict:
    """The unfailed stream: the stand-in engine itself, with no fault."""
    unfailed = {k: v for k, v in behaviour.items() if k != "fail_after_tokens"}
    backend = ScriptedBackend(EngineConfig(backend="scripted", scripted=unfailed))
    request = pb.GenerateRequest(
        chat=pb.ChatInput(messages=[pb.ChatMessage(role="user", content=PROMPT)]),
        sampling=pb.SamplingParams(
            max_tokens=body["max_tokens"], stop=body.get("stop", []), n=body.get("n", 1)
        ),
    )
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    async for message in backend.generate(request):
        for c in message.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason:
                finish[c.index] = pb.FinishReason.Name(c.finish_reason).split("_")[-1].lower()
        if message.HasField("usage"):
            usage = message.usage
    return {
        "texts": texts,
        "finish": finish,
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
        },
    }


async def stream(base_url: str, body: dict) -> dict:
    body = {
        "model": SCRIPTED_MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "stream_options": {"include_usage": True},
        **body,
    }
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    result: dict = {"error": None, "usage": None}
    url = f"{base_url}/chat/completions"
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
        assert response.status == 200, await response.text()
        raw = (await response.read()).decode()
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e]
    # A stream ends with [DONE], or with an error event (never just stops).
    assert events[-1] == "[DONE]" or "error" in json.loads(events[-1]), events[-3:]
    for payload in (json.loads(e) for e in events if e != "[DONE]"):
        if "error" in payload:
            result["error"] = payload["error"]
        for c in payload.get("choices", []):
            i = c["index"]
            texts[i] = texts.get(i, "") + (c["delta"].get("content") or "")
            if c.get("finish_reason"):
                finish[i] = c["finish_reason"]
        if payload.get("usage"):
            result["usage"] = {
                k: payload["usage"][k] for k in ("prompt_tokens", "completion_tokens")
            }
    return {**result, "texts": texts, "finish": finish}


def assert_unfailed(got: dict, want: dict) -> None:
    """A streamed answer with no error, equal to the unfailed one: texts, finish reasons
    and usage."""
    assert got["error"] is None
    assert (got["texts"], got["finish"], got["usage"]) == (
        want["texts"],
        want["finish"],
        want["usage"],
    )


@pytest.mark.parametrize(
    ("k", "n"),
    [(1, 1), (2, 1), (5, 1), (8, 2)],
    ids=["k=1", "k=2-mid-emoji", "k=5-mid-e-acute", "k=8-n=2"],
)
async def test_cut_once_after_k_tokens_equals_unfailed(resuming_fleet, k: int, n: int) -> None:
    behaviour = {**UTF8, "fail_after_tokens": k}
    stack = resuming_fleet(2, behaviour)
    body = {"max_tokens": 2 * k, "n": n}
    got, want = await stream(stack.base_url, body), await reference(behaviour, body)
    assert got["error"] is None
    assert got["texts"] == want["texts"]
    assert got["finish"] == want["finish"] == {i: "length" for i in range(n)}
    assert got["usage"] == want["usage"]
    assert router_metric(stack, "tera_router_resumes_total", reason="internal") == 1
    assert router_metric(stack, "tera_router_resume_gap_seconds_count") == 1


async def test_stop_string_across_the_cut(resuming_fleet) -> None:
    behaviour = {"tokens_per_second": 200, "fail_after_tokens": 3}
    stack = resuming_fleet(2, behaviour)
    body = {"max_tokens": 6, "stop": ["2 tok3"]}  # token 2 before the cut, token 3 after
    got, want = await stream(stack.base_url, body), await reference(behaviour, body)
    assert got["texts"] == want["texts"] == {0: "tok0 tok1 tok"}
    assert got["finish"] == {0: "stop"}
    assert got["usage"] == want["usage"] == {"prompt_tokens": 8, "completion_tokens": 4}


async def test_two_cuts_in_one_stream(resuming_fleet) -> None:
    behaviour = {**UTF8, "fail_after_tokens": 4}
    stack = resuming_fleet(3, behaviour)
    body = {"max_tokens": 12}
    assert_unfailed(await stream(stack.base_url, body), await reference(behaviour, body))
    assert router_metric(stack, "tera_router_resumes_total", reason="internal") == 2


@pytest.mark.parametrize("fleet", ["no-replica-left", "resume-limit"])
async def test_unresumable_cut_ends_with_an_explicit_error(resuming_fleet, fleet: str) -> None:
    behaviour = {**UTF8, "fail_after_tokens": 4}
    if fleet == "no-replica-left":
        stack = resuming_fleet(2, behaviour)  # the 2nd cut leaves no untried replica
    else:
        stack = resuming_fleet(3, behaviour, resume={"max_resumes": 1})
    got = await stream(stack.base_url, {"max_tokens": 12})
    assert got["error"] is not None and "not resumed" in got["error"]["message"]
    assert got["finish"] == {0: "error"}
    assert got["usage"] is None


@pytest.mark.parametrize("opt_out", [False, True])
def test_internal_grpc_callers_resume_unless_opted_out(resuming_fleet, opt_out: bool) -> None:
    behaviour = {"tokens_per_second": 200, "fail_after_tokens": 3}
    stack = resuming_fleet(2, behaviour)
    plan = stack.stack.plan
    request = pb.GenerateRequest(
        prompt=pb.PromptInput(text="hello"), sampling=pb.SamplingParams(max_tokens=6)
    )
    headers = [("tera-model", SCRIPTED_MODEL)] + ([("tera-resume", "off")] if opt_out else [])
    ids: list[int] = []
    with grpc.insecure_channel(f"{plan.host}:{plan.router_port}") as channel:
        call = pb_grpc.EngineStub(channel).Generate(request, metadata=headers, timeout=10)
        try:
            for message in call:
                ids += [i for c in message.choices for i in c.token_ids]
                usage = message.usage if message.HasField("usage") else None
        except grpc.RpcError as exc:
            assert opt_out, exc
            assert exc.code() == grpc.StatusCode.INTERNAL  # type: ignore[attr-defined]
            assert ids == [0, 1, 2]
            return
    assert not opt_out
    assert ids == list(range(6))
    assert usage is not None and usage.completion_tokens == 6


async def test_a_hedged_stream_resumes_on_the_hedge_loser(fleet) -> None:
    """Both replicas are slow to start, so the call is hedged; the winner cuts the stream
    after 3 tokens. The loser was cancelled, not failed: the stream resumes there."""
    slow_cut = {"first_token_delay_s": 0.6, "fail_after_tokens": 3, "tokens_per_second": 50}
    hedge = {"delay_s": 0.2, "budget_ratio": 1.0, "budget_burst": 10}
    stack = fleet([slow_cut, slow_cut], router={"hedge": hedge})
    body = {"max_tokens": 5}
    got, want = await stream(stack.base_url, body), await reference(slow_cut, body)
    assert router_metric(stack, "tera_router_hedges_total", model=SCRIPTED_MODEL) == 1
    assert got["error"] is None, got["error"]
    assert got["texts"] == want["texts"] and got["usage"] == want["usage"]
    assert router_metric(stack, "tera_router_resumes_total", reason="internal") == 1


async def test_a_resumed_prefill_longer_than_the_edge_idle_limit_is_not_a_timeout(
    fleet, tmp_path
) -> None:
    """The continuation's replica is silent for 3 s before its first token (a long
    re-prefill on a slow host) and the edge's idle limit between messages is 1.5 s: the
    router's keepalives tell the edge that the wait is the router's, as a first
    message's wait is, so the stream goes on instead of ending 504."""
    slow_cut = {"first_token_delay_s": 3.0, "fail_after_tokens": 2, "tokens_per_second": 200}
    router = {
        "hedge": {"enabled": False},
        "retry": {**ROUTER_SETTINGS["retry"], "first_message_timeout_s": 30.0},
        "resume": {"keepalive_s": 0.3},
    }
    edge_config = tmp_path / "edge.yaml"
    edge_config.write_text("stream_idle_timeout_s: 1.5\n")
    stack = fleet([slow_cut, slow_cut], router=router, edge_extra=["--config", str(edge_config)])
    body = {"max_tokens": 4}
    got, want = await stream(stack.base_url, body), await reference(slow_cut, body)
    assert got["error"] is None, got["error"]
    assert got["texts"] == want["texts"] and got["usage"] == want["usage"]
    assert router_metric(stack, "tera_router_resumes_total", reason="internal") == 1
    assert router_metric(stack, "tera_router_resume_gap_seconds_sum") >= 3.0


def _replicas_in_order(
    scripted_stack: Callable[..., RunningStack],
    tmp_path: Path,
    engine_transport: str,
    behaviours: list[dict],
    retry: dict,
) -> RunningStack:
    """Replicas behaving as listed, in the order round robin takes them (by address,
    over the untried), behind a router without hedges and with `retry` settings."""
    ports = sorted((free_port() for _ in behaviours), key=lambda p: f"127.0.0.1:{p}")
    settings = {
        **ROUTER_SETTINGS,
        "engine_transport": engine_transport,
        "hedge": {"enabled": False},
        "retry": {**ROUTER_SETTINGS["retry"], **retry},
    }
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump(settings))
    return scripted_stack(
        engines=len(ports),
        engine_ports=ports,
        per_engine_args=[["--scripted", json.dumps(b)] for b in behaviours],
        router_args=["--config", str(config), "--metrics-port", str(free_port())],
    )


async def test_a_continuation_silent_past_the_first_message_limit_moves_on(
    scripted_stack, tmp_path, engine_transport: str
) -> None:
    """Round robin over addresses sends the stream to the lowest, which cuts it after 2
    tokens, and its continuation to the highest, silent for 30 s: past the router's
    first-message limit (1 s), with an untried replica left, the continuation goes on
    there, as a first attempt would. (Before, only the edge's idle limit ended such a
    wait; with the keepalives that hold a long re-prefill open, nothing would.)"""
    behaviours = [{"fail_after_tokens": 2}, {}, {"first_token_delay_s": 30.0}]
    stack = _replicas_in_order(scripted_stack, tmp_path, engine_transport, behaviours, {})
    body = {"max_tokens": 4}
    got, want = await stream(stack.base_url, body), await reference({}, body)
    assert got["error"] is None, got["error"]
    assert got["texts"] == want["texts"] and got["usage"] == want["usage"]
    assert router_metric(stack, "tera_router_resumes_total", reason="internal") == 1
    assert router_metric(stack, "tera_router_resumes_total", reason="unavailable") == 1
    assert router_metric(stack, "tera_router_first_message_overdue_total") == 0


async def test_a_silent_continuation_moves_only_as_the_retry_budget_allows(
    scripted_stack, tmp_path, engine_transport: str
) -> None:
    """A budget of one retry, spent as the first attempt (silent for 30 s) is given up.
    The retry's replica cuts the stream after 2 tokens and the continuation (a cut's
    resume, never budgeted) goes to a replica silent for 3 s: past the 1 s limit it is
    not moved to the untried fourth, for want of budget, but waited for."""
    # Round robin over the untried, by address: p0, then p2 of (p1, p2, p3), then p1.
    behaviours = [
        {"first_token_delay_s": 30.0},
        {"first_token_delay_s": 3.0},
        {"fail_after_tokens": 2},
        {},
    ]
    budget = {"budget_ratio": 0, "min_retries_per_s": 0, "budget_burst": 1}
    stack = _replicas_in_order(scripted_stack, tmp_path, engine_transport, behaviours, budget)
    body = {"max_tokens": 4}
    got, want = await stream(stack.base_url, body), await reference({}, body)
    assert got["error"] is None, got["error"]
    assert got["texts"] == want["texts"] and got["usage"] == want["usage"]
    assert router_metric(stack, "tera_router_resumes_total", reason="internal") == 1
    assert router_metric(stack, "tera_router_resumes_total", reason="unavailable") == 0
    assert router_metric(stack, "tera_router_first_message_overdue_total") == 1
    assert router_metric(stack, "tera_router_retry_budget_tokens") == 0
