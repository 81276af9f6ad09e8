"""Both hops multiplexed (router_transport: mux at the edge, engine_transport: mux at the
router), with real processes: what a client sees is what it sees over plain calls.

test_mux_transport.py's end-to-end tests run here too (imported), over both hops; the
tests below compare a mux stack with a per_call one side by side.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import SCRIPTED_MODEL, RunningStack
from tests.faults.test_mux_transport import (  # noqa: F401 (collected here, over both hops)
    test_a_cancelled_stream_is_aborted_in_the_engine,
    test_concurrent_streams_equal_the_unfailed_answer,
    test_streams_cut_by_a_sigkill_resume_token_exactly,
)
from tests.faults.test_resume import UTF8

# Not the edge's own default of 1 s: a Retry-After of 7 came from the router's trailers.
ROUTER = {"retry_after_s": 7}
PER_CALL = {
    "router": {**ROUTER, "engine_transport": "per_call"},
    "edge_extra": ["--router-transport", "per_call"],
}


@pytest.fixture
def engine_transport() -> str:
    return "mux"


@pytest.fixture
def router_transport() -> str:
    return "mux"


@pytest.fixture
def pair(fleet: Callable[..., RunningStack]) -> Callable[[list[dict]], tuple[RunningStack, ...]]:
    """pair(behaviours) -> (a stack over both hops mux, one over plain calls)."""

    def start(behaviours: list[dict]) -> tuple[RunningStack, ...]:
        mux = fleet(behaviours, router=ROUTER)
        assert edge_mux_calls_opened(mux) == 0  # opened lazily, with the first stream
        return mux, fleet(behaviours, **PER_CALL)

    return start


def edge_mux_calls_opened(stack: RunningStack) -> int:
    log = stack.stack.plan.log_dir / "edge.log"  # type: ignore[operator]
    return log.read_text().count("opening a multiplexed call")


async def sdk_answers(stack: RunningStack) -> list[Any]:
    """A non-streamed chat completion through the OpenAI SDK, and a streamed one folded
    per choice (how tokens fall into chunks depends on timing, over either transport),
    less the fields that differ between any two answers (id, created)."""
    client = openai.AsyncOpenAI(base_url=stack.base_url, api_key="unused", max_retries=0)
    body: dict[str, Any] = {
        "model": SCRIPTED_MODEL,
        "messages": [{"role": "user", "content": "héllo wörld"}],
        "max_tokens": 12,
        "n": 2,
    }
    whole = (await client.chat.completions.create(**body)).model_dump()
    chunks = await client.chat.completions.create(
        **body, stream=True, stream_options={"include_usage": True}
    )
    folded: dict[str, Any] = {"choices": {}, "usage": None, "objects": set()}
    async for chunk in chunks:
        folded["objects"].add((chunk.object, chunk.model, chunk.system_fingerprint))
        folded["usage"] = chunk.usage or folded["usage"]
        for c in chunk.choices:
            text, finish = folded["choices"].get(c.index, ("", None))
            folded["choices"][c.index] = (text + (c.delta.content or ""), c.finish_reason or finish)
    await client.close()
    whole.pop("id"), whole.pop("created")
    return [whole, folded]


async def test_sdk_answers_equal_per_call(pair) -> None:
    mux, per_call = pair([{**UTF8, "tokens_per_second": 200}])
    got = await sdk_answers(mux)
    assert got == await sdk_answers(per_call)
    assert got[0]["choices"][1]["message"]["content"]  # a real answer, two choices
    assert got[1]["choices"][1][0] == got[0]["choices"][1]["message"]["content"]
    assert edge_mux_calls_opened(mux) == 1 and edge_mux_calls_opened(per_call) == 0


async def http_answer(stack: RunningStack, model: str) -> tuple[int, str | None, dict]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{stack.base_url}/chat/completions", json=body) as response,
    ):
        return response.status, response.headers.get("Retry-After"), await response.json()


async def no_replica_answer(stack: RunningStack) -> tuple[int, str | None, dict]:
    """The router's refusal once the only replica is dead and the router knows it (until
    then a call may fail on the dead connection instead)."""
    stack.stack.engines[0].kill_group(signal.SIGKILL)
    async with asyncio.timeout(20):
        while "no ready replica" not in str(answer := await http_answer(stack, SCRIPTED_MODEL)):
            await asyncio.sleep(0.2)
    return answer


async def test_router_errors_reach_the_client_as_over_plain_calls(pair) -> None:
    mux, per_call = pair([{"tokens_per_second": 200}])
    unknown = await http_answer(mux, "tera-test/no-such-model")
    assert unknown[0] == 404
    assert unknown == await http_answer(per_call, "tera-test/no-such-model")
    refused = await no_replica_answer(mux)
    assert refused[1] == "7", refused  # Retry-After, from the router's trailing metadata
    assert refused == await no_replica_answer(per_call)
