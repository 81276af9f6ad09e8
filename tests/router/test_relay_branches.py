"""Each retry branch of the relay, run through a real router in front of stand-in
engines (called over gRPC, as the edge does) and observed from outside: the router's
metrics and how many requests each engine saw.

Counts of attempts come from the engines: tera_router_retries_total also counts a
retryable failure that no retry follows (the last attempt, an exhausted budget)."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from devstack.processes import free_port
from services.common import metadata
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc
from tests.conftest import SCRIPTED_MODEL, RunningStack

FAILS = {"fail_before_first": True}
# Breakers that never trip, unless a test wants them to: the branch under test decides.
SETTINGS = {
    "policy": "round_robin",
    "health": {"check_interval_s": 0.2, "check_timeout_s": 1.0, "load_poll_interval_s": 0.2},
    "retry": {"backoff_base_s": 0.01, "max_attempts": 3, "first_message_timeout_s": 30},
    "breaker": {"consecutive_failures": 100, "base_ejection_s": 5, "max_ejection_s": 10},
}


class Fleet:
    def __init__(self, stack: RunningStack, metrics_port: int) -> None:
        self.stack = stack
        self._metrics_port = metrics_port

    def metric(self, name: str, **labels: str) -> float:
        url = f"http://127.0.0.1:{self._metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    def engine_requests(self) -> list[int]:
        return [self.stack.engine_load(i).total_requests for i in range(len(self.addresses))]

    @property
    def addresses(self) -> list[str]:
        return self.stack.engine_addresses

    async def generate(
        self, max_tokens: int = 3, timeout_s: float = 30
    ) -> tuple[grpc.StatusCode, int]:
        """One call through the router: (final code, messages received)."""
        plan = self.stack.stack.plan
        request = pb.GenerateRequest(
            request_id="r",
            model=SCRIPTED_MODEL,
            chat=pb.ChatInput(messages=[pb.ChatMessage(role="user", content="hi")]),
            sampling=pb.SamplingParams(max_tokens=max_tokens),
        )
        async with grpc.aio.insecure_channel(f"{plan.host}:{plan.router_port}") as channel:
            call = pb_grpc.EngineStub(channel).Generate(
                request, metadata=[(metadata.MODEL, SCRIPTED_MODEL)], timeout=timeout_s
            )
            messages = 0
            try:
                async for _ in call:
                    messages += 1
            except grpc.aio.AioRpcError as exc:
                return exc.code(), messages
        return grpc.StatusCode.OK, messages


@pytest.fixture
def fleet(scripted_stack: Callable[..., RunningStack], tmp_path: Path) -> Callable[..., Fleet]:
    def start(
        behaviours: list[dict], router: dict | None = None, extra: list[list[str]] | None = None
    ) -> Fleet:
        config = tmp_path / "router.yaml"
        settings = {
            k: {**v, **(router or {}).get(k, {})} for k, v in SETTINGS.items() if k != "policy"
        }
        settings |= {k: v for k, v in (router or {}).items() if k not in settings}
        config.write_text(yaml.safe_dump({"policy": "round_robin", **settings}))
        port = free_port()
        extra = extra or [[] for _ in behaviours]
        stack = scripted_stack(
            engines=len(behaviours),
            per_engine_args=[
                ["--scripted", json.dumps(b), *e] for b, e in zip(behaviours, extra, strict=True)
            ],
            router_args=["--config", str(config), "--metrics-port", str(port)],
        )
        return Fleet(stack, port)

    return start


async def test_attempt_cap(fleet: Callable[..., Fleet]) -> None:
    f = fleet([FAILS, FAILS, FAILS], router={"retry": {"max_attempts": 2}})
    code, _ = await f.generate()
    assert code == grpc.StatusCode.INTERNAL, "the last attempt's status"
    assert sum(f.engine_requests()) == 2, "two attempts of three replicas"


async def test_retry_budget_exhausted(fleet: Callable[..., Fleet]) -> None:
    # A budget of one retry in all, never refilled.
    budget = {"budget_ratio": 0, "min_retries_per_s": 0, "budget_burst": 1, "max_attempts": 2}
    f = fleet([FAILS, FAILS], router={"retry": budget})
    assert (await f.generate())[0] == grpc.StatusCode.INTERNAL  # 2 attempts: the budget
    assert (await f.generate())[0] == grpc.StatusCode.INTERNAL  # 1 attempt: no budget left
    assert sum(f.engine_requests()) == 3


async def test_caller_deadline_reached_is_not_retried(fleet: Callable[..., Fleet]) -> None:
    hangs = {"hang": True}
    f = fleet([hangs, hangs])
    code, _ = await f.generate(timeout_s=1.0)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.sleep(0.3)
    assert sum(f.engine_requests()) == 1, "no attempt after the caller's deadline"
    assert f.metric("tera_router_retries_total") == 0


async def test_resource_exhausted_moves_without_a_breaker_penalty(
    fleet: Callable[..., Fleet],
) -> None:
    slow = {"tokens_per_second": 5}
    # A takes one stream at a time, and the router (polling load every 60 s) cannot
    # know A is full: A answers RESOURCE_EXHAUSTED itself. One fault would eject it.
    f = fleet(
        [slow, {}],
        router={"breaker": {"consecutive_failures": 1}, "health": {"load_poll_interval_s": 60}},
        extra=[["--max-in-flight", "1"], []],
    )
    async with grpc.aio.insecure_channel(f.addresses[0]) as channel:  # fills A directly
        busy = pb_grpc.EngineStub(channel).Generate(
            pb.GenerateRequest(
                request_id="busy",
                model=SCRIPTED_MODEL,
                chat=pb.ChatInput(messages=[pb.ChatMessage(role="user", content="hi")]),
                sampling=pb.SamplingParams(max_tokens=50),
            )
        )
        await busy.read()
        results = [await f.generate() for _ in range(4)]  # round robin: 2 go to A first
        busy.cancel()
    assert results == [(grpc.StatusCode.OK, 1)] * 4
    assert f.metric("tera_router_retries_total", reason="RESOURCE_EXHAUSTED") >= 1
    assert f.metric("tera_router_replica_ejections_total", replica=f.addresses[0]) == 0
    assert f.metric("tera_router_replica_up", replica=f.addresses[0]) == 1


async def test_empty_ok_stream_is_a_complete_answer(fleet: Callable[..., Fleet]) -> None:
    f = fleet([{}, {}])
    assert await f.generate(max_tokens=0) == (grpc.StatusCode.OK, 0)
    assert sum(f.engine_requests()) == 1, "not retried"
    assert f.metric("tera_router_retries_total") == 0
    assert f.metric("tera_router_requests_total", code="OK") == 1


async def test_calls_sent_before_an_ejection_do_not_eject_again_when_they_fail_after_it(
    fleet: Callable[..., Fleet],
) -> None:
    """A hung replica A beside a healthy B: two calls on A time out, eject A (0.5 s) and
    move to B; three sent 2 s after them, before the ejection, time out 2 s after it
    ended. They say nothing new: no second ejection (counted, each would eject again;
    taken while ejected only, one would). Every call is answered by B."""
    retry = {"first_message_timeout_s": 4.0, "max_attempts": 2}
    breaker = {"consecutive_failures": 2, "base_ejection_s": 0.5}
    no_hedge = {"enabled": False}
    f = fleet([{"hang": True}, {}], router={"retry": retry, "breaker": breaker, "hedge": no_hedge})
    early = [asyncio.create_task(f.generate()) for _ in range(4)]  # round robin: A, B, A, B
    await asyncio.sleep(2.0)
    late = [asyncio.create_task(f.generate()) for _ in range(6)]
    results = await asyncio.gather(*early, *late)
    assert [code for code, _ in results] == [grpc.StatusCode.OK] * 10
    assert f.engine_requests()[0] == 5, "the late three reached A before the ejection"
    assert f.metric("tera_router_replica_ejections_total") == 1


async def test_a_slow_first_message_with_nowhere_else_to_go_is_awaited(
    fleet: Callable[..., Fleet],
) -> None:
    """The only replica takes 4x the first-message timeout to answer (a long prefill on
    a slow host): abandoning it would fail a call it is working through, so the router
    waits on, and counts no fault against it."""
    retry = {"first_message_timeout_s": 0.5}
    f = fleet(
        [{"first_token_delay_s": 2.0}],
        router={"retry": retry, "breaker": {"consecutive_failures": 1}},
    )
    assert (await f.generate())[0] == grpc.StatusCode.OK
    assert f.engine_requests() == [1], "not retried"
    assert f.metric("tera_router_replica_ejections_total") == 0
    assert f.metric("tera_router_retries_total") == 0
    assert f.metric("tera_router_first_message_overdue_total") == 1, "once per attempt"


async def test_a_slow_first_message_is_awaited_once_the_retry_budget_is_spent(
    fleet: Callable[..., Fleet],
) -> None:
    """Two slow replicas and a budget of one retry in all: the first call moves once
    (A to B) and spends it; the second has an untried replica but no budget to go there,
    so abandoning its attempt would only fail it."""
    budget = {"budget_ratio": 0, "min_retries_per_s": 0, "budget_burst": 1}
    slow = {"first_token_delay_s": 2.0}
    f = fleet(
        [slow, slow],
        router={"retry": {"first_message_timeout_s": 0.5, **budget}, "hedge": {"enabled": False}},
    )
    assert [(await f.generate())[0] for _ in range(2)] == [grpc.StatusCode.OK] * 2
    assert sum(f.engine_requests()) == 3, "one retry, the budget's"
    assert f.metric("tera_router_retry_budget_exhausted_total") == 0, "no retry was wanted"
    assert f.metric("tera_router_first_message_overdue_total") == 2


async def test_slow_first_messages_overdue_at_once_move_no_more_than_the_budget_allows(
    fleet: Callable[..., Fleet],
) -> None:
    """Four calls on two slow replicas, overdue at the same moment, with a budget of one
    retry in all: the first to give its attempt up takes the token as it does, and the
    others, finding none, wait on. Had each only asked the budget and spent it at the
    retry, all four would have given up their attempts and three failed."""
    budget = {"budget_ratio": 0, "min_retries_per_s": 0, "budget_burst": 1}
    slow = {"first_token_delay_s": 3.0}
    f = fleet(
        [slow, slow],
        router={"retry": {"first_message_timeout_s": 1.0, **budget}, "hedge": {"enabled": False}},
    )
    calls = [asyncio.create_task(f.generate()) for _ in range(4)]
    while sum(f.stack.engine_load(i).in_flight for i in range(2)) < 4:
        await asyncio.sleep(0.02)
    # Frozen past their first-message timeouts, the router then meets all four in one
    # turn of its loop: the checks of a burst that hits the limit together.
    router = f.stack.stack.router
    assert router is not None
    router.kill_group(signal.SIGSTOP)
    await asyncio.sleep(1.5)
    router.kill_group(signal.SIGCONT)
    answers = await asyncio.gather(*calls)
    assert [code for code, *_ in answers] == [grpc.StatusCode.OK] * 4
    assert sum(f.engine_requests()) == 5, "one retry, the budget's"
    assert f.metric("tera_router_retry_budget_exhausted_total") == 0


async def test_a_retry_paid_for_and_then_not_made_goes_back_to_the_budget(
    fleet: Callable[..., Fleet],
) -> None:
    """The primary is given up at 1 s for a third replica (the budget's one token paid),
    but its hedge answers first: no retry is made, so the token is refunded."""
    budget = {"budget_ratio": 0, "min_retries_per_s": 0, "budget_burst": 1}
    slow = {"first_token_delay_s": 1.6}
    f = fleet(
        [slow, slow, slow],
        router={
            "retry": {"first_message_timeout_s": 1.0, **budget},
            "hedge": {"delay_s": 0.2, "budget_ratio": 1.0, "budget_burst": 10},
        },
    )
    assert f.metric("tera_router_retry_budget_tokens") == 1
    assert (await f.generate())[0] == grpc.StatusCode.OK
    assert sum(f.engine_requests()) == 2, "the primary and its hedge; no retry"
    assert f.metric("tera_router_hedges_total", model=SCRIPTED_MODEL) == 1
    assert f.metric("tera_router_retry_budget_tokens") == 1


async def test_a_models_own_first_message_limit_keeps_its_slow_prefills_in_place(
    fleet: Callable[..., Fleet],
) -> None:
    """As the next test, with the model's own limit (10 s) over the fleet's (0.5 s): its
    calls on the slow replica are not moved for a prefill the model is known to take."""
    retry = {"first_message_timeout_s": 0.5}
    f = fleet(
        [{"first_token_delay_s": 2.0}, {}],
        router={
            "retry": retry,
            "hedge": {"enabled": False},
            "model_first_message_timeout_s": {SCRIPTED_MODEL: 10.0},
        },
    )
    codes = [(await f.generate())[0] for _ in range(2)]  # round robin: one each
    assert codes == [grpc.StatusCode.OK] * 2
    assert f.engine_requests() == [1, 1], "none moved"
    assert f.metric("tera_router_retries_total") == 0


async def test_a_slow_first_message_moves_when_another_replica_can_take_it(
    fleet: Callable[..., Fleet],
) -> None:
    retry = {"first_message_timeout_s": 0.5}
    f = fleet(
        [{"first_token_delay_s": 30.0}, {}], router={"retry": retry, "hedge": {"enabled": False}}
    )
    codes = [(await f.generate())[0] for _ in range(2)]  # round robin: A gets one or two
    assert codes == [grpc.StatusCode.OK] * 2
    on_a, on_b = f.engine_requests()
    assert on_a >= 1
    assert on_b == 2, "each call answered by B, those on A moved there"
    assert f.metric("tera_router_retries_total", reason="DEADLINE_EXCEEDED") == on_a
    assert f.metric("tera_router_first_message_overdue_total") == 0
