"""Preempt-and-resume with real processes: stand-in engines whose every slot is held by
`batch` streams; an `interactive` request takes one of those slots at once, and the
preempted stream, queued again, is continued from its journal when a slot frees.

The batch caller must get exactly the answer of an unpreempted run (the stand-in engine
in process, as in test_resume.py), with a pause and no error; the interactive caller's
time to first token must stay near its unloaded figure (a step or two of the stand-in,
plus the path through edge and router), not the rest of a 3-second batch stream.
Within one class the same holds for a tenant under its fair share of the slots while
another holds more than its share (share_preempt.py), and never the other way round.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import yaml

from devstack.processes import free_port
from tests.conftest import SCRIPTED_MODEL, RunningStack
from tests.faults.fleet import router_metric
from tests.faults.test_resume import PROMPT, reference
from tests.observability.otlp_receiver import OtlpReceiver, tree

ENGINE = {"tokens_per_second": 20, "step_ms": 20}  # a batch stream of 60 tokens: 3 s
BATCH_TOKENS = 60
KEYS = {
    "inter": {"priority": "interactive"},
    "bulk": {"priority": "batch"},
    "quiet": {},  # quiet and noisy: the same class (standard), equal weights
    "noisy": {},
}
ROUTER = {
    "hedge": {"enabled": False},
    "health": {"check_interval_s": 0.2, "check_timeout_s": 0.5, "load_poll_interval_s": 0.2},
    "fair": {"queue_size": 64, "max_wait_s": {"interactive": 10, "batch": 30}},
}
# Over the interactive request's unloaded TTFT: a few stand-in steps plus scheduling
# noise on a loaded 2-core machine; without preemption it waits about 2.5 s.
BOUND_S = 0.6

Fleet = Callable[..., RunningStack]


@dataclass
class Answer:
    texts: dict[int, str] = field(default_factory=dict)
    finish: dict[int, str] = field(default_factory=dict)
    usage: dict | None = None
    error: dict | None = None
    ttft: float | None = None
    longest_gap: float = 0.0  # between two content events: the preemption's pause


@pytest.fixture
def fleet(scripted_stack: Callable[..., RunningStack], tmp_path: Path) -> Fleet:
    def start(
        slots: int,
        env: dict[str, str] | None = None,
        resume: dict | None = None,
        engines: list[dict] | None = None,
        edge: dict | None = None,
        **fair: object,
    ) -> RunningStack:
        router = tmp_path / "router.yaml"
        settings = {**ROUTER, "fair": {**ROUTER["fair"], **fair}, "resume": resume or {}}
        router.write_text(yaml.safe_dump(settings))
        catalog = tmp_path / "catalog.yaml"
        keys = [{"name": n, "key": f"sk-{n}", **extra} for n, extra in KEYS.items()]
        catalog.write_text(yaml.safe_dump({"models": [{"id": SCRIPTED_MODEL}], "keys": keys}))
        edge_config = tmp_path / "edge.yaml"
        edge_config.write_text(yaml.safe_dump(edge or {}))
        behaviours = engines or [ENGINE]
        stack = scripted_stack(
            engines=len(behaviours),
            per_engine_args=[
                ["--scripted", json.dumps(b), "--max-in-flight", str(slots)] for b in behaviours
            ],
            router_args=["--config", str(router), "--metrics-port", str(free_port())],
            edge_args=["--catalog", str(catalog), "--config", str(edge_config)],
            env=env or {},
        )
        time.sleep(0.5)  # the router has polled the engine's admission limit
        return stack

    return start


async def ask(base: str, key: str, max_tokens: int, trace_id: str | None = None) -> Answer:
    body = {
        "model": SCRIPTED_MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    answer, started = Answer(), time.monotonic()
    last = started
    headers = {"Authorization": f"Bearer {key}"}
    if trace_id:
        headers["traceparent"] = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base}/chat/completions", json=body, headers=headers) as response,
    ):
        assert response.status == 200, await response.text()
        async for line in response.content:
            payload = line.decode().strip().removeprefix("data: ")
            if not payload or payload == "[DONE]":
                continue
            _take(answer, json.loads(payload))
            now = time.monotonic()
            if answer.texts and answer.ttft is None:
                answer.ttft = now - started
            elif answer.ttft is not None:
                answer.longest_gap = max(answer.longest_gap, now - last)
            last = now
    return answer


def _take(answer: Answer, event: dict) -> None:
    answer.error = event.get("error", answer.error)
    for c in event.get("choices", []):
        content = c["delta"].get("content")
        if content:
            answer.texts[c["index"]] = answer.texts.get(c["index"], "") + content
        if c.get("finish_reason"):
            answer.finish[c["index"]] = c["finish_reason"]
    if event.get("usage"):
        answer.usage = {k: event["usage"][k] for k in ("prompt_tokens", "completion_tokens")}


async def unloaded_ttft(base: str) -> float:
    ttfts = [(await ask(base, "sk-inter", 5)).ttft or 0.0 for _ in range(3)]
    return max(ttfts)


async def assert_unpreempted(batch: Answer, tokens: int = BATCH_TOKENS) -> None:
    want = await reference(ENGINE, {"max_tokens": tokens})
    assert batch.error is None, batch.error
    assert batch.texts == want["texts"]
    assert batch.finish == want["finish"] == {0: "length"}
    assert batch.usage == want["usage"]


async def test_a_preempted_batch_stream_loses_no_token_and_interactive_waits_a_step(
    fleet: Fleet,
) -> None:
    stack = fleet(slots=1)
    base = stack.base_url
    alone = await unloaded_ttft(base)
    batch = asyncio.create_task(ask(base, "sk-bulk", BATCH_TOKENS))
    await asyncio.sleep(0.5)  # the batch stream holds the only slot, ~10 tokens in
    inter = await ask(base, "sk-inter", 5)
    got = await batch
    print(
        f"\n[preempt] interactive TTFT {inter.ttft:.3f} s (alone {alone:.3f} s); "
        f"batch paused {got.longest_gap:.3f} s"
    )
    assert inter.error is None and inter.ttft is not None
    assert inter.ttft <= alone + BOUND_S
    await assert_unpreempted(got)
    assert got.longest_gap >= 0.2  # it did pause: the interactive answer went first
    labels = {"priority": "batch", "by": "interactive"}
    assert router_metric(stack, "tera_router_preemptions_total", **labels) == 1
    assert router_metric(stack, "tera_router_resumes_total", reason="preempt") == 1


async def test_a_preempted_stream_queued_past_the_edge_idle_limit_is_not_a_timeout(
    fleet: Fleet,
) -> None:
    """The interactive answer that takes the batch stream's only slot lasts 3 s, twice
    the edge's idle limit between messages: the router's keepalives, while the
    preempted stream waits for its slot, tell the edge that the wait is the router's,
    so the stream pauses and goes on rather than ending 504."""
    stack = fleet(slots=1, resume={"keepalive_s": 0.3}, edge={"stream_idle_timeout_s": 1.5})
    base = stack.base_url
    batch = asyncio.create_task(ask(base, "sk-bulk", BATCH_TOKENS))
    await asyncio.sleep(0.5)  # the batch stream holds the only slot
    inter = await ask(base, "sk-inter", BATCH_TOKENS)
    got = await batch
    assert inter.error is None, inter.error
    await assert_unpreempted(got)
    assert got.longest_gap >= 1.5  # it waited past the idle limit
    assert router_metric(stack, "tera_router_resumes_total", reason="preempt") == 1


async def test_streams_preempted_again_and_again_still_match_and_then_finish(
    fleet: Fleet,
) -> None:
    """Two slots, two batch streams, interactive requests every 0.4 s: each batch stream
    is preempted up to max_preemptions (2) times, then runs to its end."""
    stack = fleet(slots=2)
    base = stack.base_url
    alone = await unloaded_ttft(base)
    batches = [asyncio.create_task(ask(base, "sk-bulk", BATCH_TOKENS)) for _ in range(2)]
    await asyncio.sleep(0.5)
    ttfts = []
    for _ in range(6):
        inter = await ask(base, "sk-inter", 5)
        assert inter.error is None and inter.ttft is not None
        ttfts.append(inter.ttft)
        await asyncio.sleep(0.2)
    results = await asyncio.gather(*batches)
    preempted = router_metric(stack, "tera_router_preemptions_total", priority="batch")
    print(
        f"\n[preempt] 6 interactive TTFTs {[round(t, 3) for t in ttfts]}; {preempted} preemptions"
    )
    for got in results:
        await assert_unpreempted(got)
    assert preempted == 4  # max_preemptions (2) for each of the two streams
    assert sorted(ttfts)[3] <= alone + BOUND_S  # while batch streams could still yield


async def test_preempted_thirty_times_the_stream_matches_and_no_interactive_call_is_refused(
    fleet: Fleet,
) -> None:
    """One slot; an interactive call every ~0.15 s preempts the batch stream each time.
    The router gives the slot on as it cancels the batch call, a little before the engine
    has torn that call down: the engine waits for the slot rather than refuse (seen: about
    1 call in 30 refused, 429, without that wait)."""
    stack = fleet(slots=1, max_preemptions=100)
    base = stack.base_url
    batch = asyncio.create_task(ask(base, "sk-bulk", 150))
    await asyncio.sleep(0.3)
    ttfts = []
    for _ in range(30):
        inter = await ask(base, "sk-inter", 2)  # asserts 200
        ttfts.append(inter.ttft or 0.0)
        await asyncio.sleep(0.05)
    await assert_unpreempted(await batch, tokens=150)
    preempted = router_metric(stack, "tera_router_preemptions_total", priority="batch")
    print(f"\n[preempt] {preempted} preemptions; interactive TTFT max {max(ttfts):.3f} s")
    assert preempted >= 25  # the last few may find the batch stream done


async def test_a_stream_past_the_journal_cap_is_not_preempted(fleet: Fleet) -> None:
    """A stream whose kept messages passed resume.max_kept_bytes could not be continued:
    it runs to its end, and the interactive request waits for it."""
    stack = fleet(slots=1, resume={"max_kept_bytes": 200})  # ~10 messages of a token
    base = stack.base_url
    batch = asyncio.create_task(ask(base, "sk-bulk", BATCH_TOKENS))
    await asyncio.sleep(1.0)  # ~20 tokens in: past the cap
    inter = await ask(base, "sk-inter", 5)
    await assert_unpreempted(await batch)
    assert inter.ttft is not None and inter.ttft >= 1.0  # it waited for the batch stream
    assert router_metric(stack, "tera_router_preemptions_total") == 0


async def test_a_preemption_shows_in_the_trace(fleet: Fleet) -> None:
    """The batch call's router span: a `preempted` event, the cut attempt marked with it
    (not failed), the wait for a slot again as a `queue` span, and a second attempt."""
    with OtlpReceiver() as receiver:
        stack = fleet(slots=1, env=receiver.env)
        trace_id = secrets.token_hex(16)
        batch = asyncio.create_task(ask(stack.base_url, "sk-bulk", BATCH_TOKENS, trace_id))
        await asyncio.sleep(0.5)
        await ask(stack.base_url, "sk-inter", 5)
        await assert_unpreempted(await batch)
        spans = receiver.wait_for(trace_id, {"tera-edge", "tera-router", "tera-engine"})
    router = [s for s in spans if s.service == "tera-router" and s.kind == 2]  # SERVER
    assert len(router) == 1, tree(spans)
    children = [s for s in spans if s.parent_id == router[0].span_id]
    attempts = sorted((s for s in children if s.name == "attempt"), key=lambda s: s.start_ns)
    assert "preempted" in router[0].events, tree(spans)
    assert [a.events.count("preempted") for a in attempts] == [1, 0], tree(spans)
    assert attempts[0].status_code != 2  # ERROR: a preemption is no failure
    assert [s.name for s in children].count("queue") == 1, tree(spans)


@pytest.mark.parametrize("share", [True, False], ids=["share-on", "share-off"])
async def test_a_quiet_tenant_takes_a_slot_from_a_same_class_flood(
    fleet: Fleet, share: bool
) -> None:
    """Two slots, both held by the noisy tenant's 3-second streams and four more of its
    requests waiting: the quiet tenant (same class, equal weight) gets a slot within a
    step or two; the noisy streams preempted for it end exactly as unpreempted ones.
    With the switch off it waits for a noisy stream to end (the contrast)."""
    stack = fleet(slots=2, preempt_for_share=share)
    base = stack.base_url
    alone = await unloaded_ttft(base)
    noisy = [asyncio.create_task(ask(base, "sk-noisy", BATCH_TOKENS)) for _ in range(6)]
    await asyncio.sleep(0.6)  # two noisy streams hold the slots, committed
    quiet = []
    for _ in range(3):
        quiet.append(await ask(base, "sk-quiet", 5))
        await asyncio.sleep(0.1)
    answers = await asyncio.gather(*noisy)
    ttfts = [q.ttft or 0.0 for q in quiet]
    preempted = router_metric(stack, "tera_router_preemptions_total", by="standard")
    print(f"\n[share {share}] quiet TTFTs {[round(t, 3) for t in ttfts]}; {preempted} preempted")
    for answer in answers:
        await assert_unpreempted(answer)
    if not share:
        assert preempted == 0 and min(ttfts) >= 1.0  # it waited for a 3 s stream to end
        return
    assert max(ttfts) <= alone + BOUND_S
    assert preempted == 3  # one slot per quiet request: its tenant's share is one of two
    assert sum(a.longest_gap >= 0.2 for a in answers) >= 1  # a noisy stream did pause


async def test_a_tenant_at_its_share_is_not_preempted_for_another(fleet: Fleet) -> None:
    """Three slots: quiet holds one, noisy two (its 1.5 share, rounded its way), and each
    has one more waiting. Taking a slot from either would leave it under its share, so it
    would take it back (thrash): nobody is preempted, everyone's answer is whole. (Quiet's
    first stream outlasts noisy's, so no slot frees to tip the balance meanwhile.)"""
    stack = fleet(slots=3)
    base = stack.base_url
    first = asyncio.create_task(ask(base, "sk-quiet", BATCH_TOKENS))
    await asyncio.sleep(0.3)
    noisy = [asyncio.create_task(ask(base, "sk-noisy", 40)) for _ in range(3)]
    await asyncio.sleep(0.6)  # every stream committed
    second = asyncio.create_task(ask(base, "sk-quiet", 40))
    await assert_unpreempted(await first)
    for answer in await asyncio.gather(second, *noisy):
        await assert_unpreempted(answer, tokens=40)
    assert router_metric(stack, "tera_router_preemptions_total") == 0


async def test_a_stream_resumed_after_a_fault_can_still_be_preempted(fleet: Fleet) -> None:
    """Two replicas of one slot that cut every call after 10 tokens (5 tokens/s): a batch
    stream of 20 tokens is cut at 2 s and resumed on the other replica (its last 10
    tokens are not cut); a standard stream of 10 then takes the first replica. An
    interactive request takes the slot of the lowest class, the resumed batch stream
    (before, a resumed stream was never preemptable: the standard one went instead),
    and every answer matches the unfailed, unpreempted stream."""
    faulty = {**ENGINE, "tokens_per_second": 5, "fail_after_tokens": 10}
    stack = fleet(slots=1, engines=[faulty, faulty])
    base = stack.base_url
    batch = asyncio.create_task(ask(base, "sk-bulk", 20))
    await asyncio.sleep(2.3)  # cut at ~2 s and resumed
    assert router_metric(stack, "tera_router_resumes_total", reason="internal") == 1
    standard = asyncio.create_task(ask(base, "sk-quiet", 10))
    await asyncio.sleep(0.5)
    inter = await ask(base, "sk-inter", 2)
    await assert_unpreempted(await batch, tokens=20)
    await assert_unpreempted(await standard, tokens=10)
    print(f"\n[preempt] interactive TTFT {inter.ttft:.3f} s beside a resumed stream")
    assert inter.error is None and inter.ttft is not None and inter.ttft <= BOUND_S
    assert router_metric(stack, "tera_router_preemptions_total", priority="batch") == 1
    assert router_metric(stack, "tera_router_preemptions_total", priority="standard") == 0
