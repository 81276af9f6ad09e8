"""cache_aware with two real vLLM engines: their KV events reach the router, and a
repeated prefix goes to the engine that cached it, where vLLM reports cached tokens.

Each prompt is chosen so that, without the engines' events, the router's fallback
(rendezvous hashing of the prefix) would pick the other engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
import yaml

from devstack.engine_args import vllm_engine_args
from devstack.prefix_client import engine_totals, generate
from devstack.processes import free_port
from devstack.stack import Stack, StackPlan
from services.common import metadata, prefix_hash
from services.edge.prefix import PrefixNamer
from services.engine.model_prep import DEFAULT_MODEL_ID
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc
from services.router.policies.cache_aware import _rendezvous
from tests.conftest import CACHE_DIR, RunningStack

ROUTER = {
    "policy": "cache_aware",
    "health": {"check_interval_s": 0.2, "check_timeout_s": 1.0, "load_poll_interval_s": 0.2},
    "hedge": {"enabled": False},
}
PROMPT_TOKENS = 300


@pytest.fixture(scope="module")
def two_vllm(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    logs = tmp_path_factory.mktemp("cache-vllm")
    config = logs / "router.yaml"
    config.write_text(yaml.safe_dump(ROUTER))
    edge = logs / "edge.yaml"  # the edge names prompt prefixes with the model's tokenizer
    edge.write_text(yaml.safe_dump({"prefix_tokenizers": {DEFAULT_MODEL_ID: str(model_dir)}}))
    plan = StackPlan(
        edge_port=free_port(),
        router_port=free_port(),
        engine_ports=[free_port(), free_port()],
        engine_args=vllm_engine_args(model_dir, CACHE_DIR),
        router_args=["--config", str(config)],
        edge_args=["--config", str(edge)],
        log_dir=logs,
    )
    stack = Stack(plan).start(timeout_s=600)
    time.sleep(1)
    try:
        yield RunningStack(stack)
    finally:
        stack.stop()


def _fallback(addresses: list[str], names: list[int] | tuple[int, ...]) -> int:
    """The engine the router picks for a prefix no engine holds."""
    key = str(names[0])
    return addresses.index(max(addresses, key=lambda a: _rendezvous(key, a)))


def _prompt_against(addresses: list[str], owner: int, seed: int) -> list[int]:
    """Token ids whose prefix the fallback would send away from engine `owner`."""
    while True:
        ids = [(seed * 7919 + i * 104_729) % 40_000 + 200 for i in range(PROMPT_TOKENS)]
        key = str(prefix_hash.chunk_hashes(ids)[0])
        if max(addresses, key=lambda a: _rendezvous(key, a)) != addresses[owner]:
            return ids
        seed += 1000


def _request(ids: list[int]) -> tuple[pb.GenerateRequest, list]:
    request = pb.GenerateRequest(
        model=DEFAULT_MODEL_ID,
        prompt=pb.PromptInput(token_ids=pb.TokenIds(ids=ids)),
        sampling=pb.SamplingParams(max_tokens=2, temperature=0),
    )
    names = prefix_hash.encode(prefix_hash.chunk_hashes(ids))
    return request, [(metadata.MODEL, DEFAULT_MODEL_ID), (prefix_hash.METADATA_KEY, names)]


async def _call(address: str, ids: list[int]) -> int:
    request, md = _request(ids)
    async with grpc.aio.insecure_channel(address) as channel:
        return (await generate(pb_grpc.EngineStub(channel), request, md)).cached_tokens


async def test_repeated_prefix_goes_where_vllm_cached_it(two_vllm: RunningStack) -> None:
    engines = two_vllm.engine_addresses
    plan = two_vllm.stack.plan
    router = f"{plan.host}:{plan.router_port}"
    prompts = [_prompt_against(engines, owner, seed=owner + 1) for owner in (0, 1)]
    for owner, ids in enumerate(prompts):
        assert await _call(engines[owner], ids) == 0  # cold: vLLM computes it all
    await asyncio.sleep(1.0)  # KV events: engine core -> engine -> router
    for owner, ids in enumerate(prompts):
        follow_up = ids[:-20] + [7, 8, 9] * 10  # same prefix, new ending
        before = engine_totals(engines)
        cached = await _call(router, follow_up)
        after = engine_totals(engines)
        served = [i for i in (0, 1) if after[i] > before[i]]
        assert served == [owner], f"prefix of engine {owner} went to {served}"
        assert cached > 0
        # The same request on the other engine finds nothing cached there.
        assert await _call(engines[1 - owner], follow_up) == 0


def _conversation(seed: int) -> list[dict[str, str]]:  # about 600 tokens
    facts = " ".join(f"Rule {i}: answer item {seed * 100 + i} politely." for i in range(40))
    return [{"role": "system", "content": facts}, {"role": "user", "content": "Hello!"}]


async def test_http_conversation_returns_to_its_engine(
    two_vllm: RunningStack, model_dir: Path
) -> None:
    """Through the edge: it names the prompt's prefix with the model's tokenizer, and
    the next turn of a conversation goes where vLLM holds the first."""
    engines = two_vllm.engine_addresses
    namer = PrefixNamer({DEFAULT_MODEL_ID: str(model_dir)})
    messages = _conversation(0)
    first = chat_request(messages)
    # Served first by the engine the no-match fallback would not pick.
    owner = 1 - _fallback(engines, prefix_hash.decode(namer.names(first) or b""))
    async with grpc.aio.insecure_channel(engines[owner]) as channel:
        await generate(pb_grpc.EngineStub(channel), first, [(metadata.MODEL, DEFAULT_MODEL_ID)])
    await asyncio.sleep(1.0)
    messages += [{"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "Rule 3?"}]
    before = engine_totals(engines)
    body = {"model": DEFAULT_MODEL_ID, "messages": messages, "max_tokens": 2}
    url = f"{two_vllm.base_url}/chat/completions"
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
        assert response.status == 200, await response.text()
        usage = (await response.json())["usage"]
    after = engine_totals(engines)
    assert [i for i in (0, 1) if after[i] > before[i]] == [owner]
    assert usage["prompt_tokens_details"]["cached_tokens"] > 0


def chat_request(messages: list[dict[str, str]]) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model=DEFAULT_MODEL_ID,
        chat=pb.ChatInput(messages=[pb.ChatMessage(**m) for m in messages]),
        sampling=pb.SamplingParams(max_tokens=2, temperature=0),
    )
