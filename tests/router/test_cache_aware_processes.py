"""cache_aware with real processes: three stand-in engines with simulated prefix caches
behind a router. Which engine served a call: the one whose admitted count moved."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import grpc
import yaml

from devstack.prefix_client import call_metadata, chat, engine_loads, engine_totals, generate
from devstack.processes import ManagedProcess, free_port, wait_until
from devstack.readiness import router_has_replicas
from services.common import prefix_hash
from services.common.word_tokens import prompt_token_ids
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc
from services.router.policies.cache_aware import _rendezvous
from tests.conftest import SCRIPTED_MODEL, RunningStack
from tests.faults.fleet import router_metric, router_metrics_url, scraped_metric

ROUTER = {
    "policy": "cache_aware",
    "policy_options": {"cache_aware": {"load_margin": 2, "load_factor": 1.5}},
    "health": {"check_interval_s": 0.2, "check_timeout_s": 0.5, "load_poll_interval_s": 0.2},
    "hedge": {"enabled": False},
}
CACHE = {"prefix_cache_chunks": 24}  # 384 tokens per engine
INDEX_CHUNKS = "tera_router_prefix_index_chunks"
ARRIVALS = "tera_router_replica_arrivals_per_s"


def _system(group: str, words: int = 64) -> tuple[str, str]:
    return ("system", " ".join(f"{group}{i}" for i in range(words)))


def _start(
    scripted_stack: Callable[..., RunningStack], tmp_path: Path, engines: int = 3, **cache: object
):
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump(ROUTER))
    edge = tmp_path / "edge.yaml"  # the edge names stand-in prompts' prefixes
    edge.write_text(yaml.safe_dump({"prefix_tokenizers": {SCRIPTED_MODEL: "words"}}))
    return scripted_stack(
        engines=engines,
        behaviour={**CACHE, **cache},
        router_args=["--config", str(config), "--metrics-port", str(free_port())],
        edge_args=["--config", str(edge)],
    )


def _router(stack: RunningStack) -> str:
    return f"{stack.stack.plan.host}:{stack.stack.plan.router_port}"


async def _served_by(
    stack: RunningStack, turns: list[tuple[str, str]], router: str | None = None
) -> tuple[int, int]:
    """(index of the engine that served it, its cached tokens), routed by the router."""
    before = engine_totals(stack.engine_addresses)
    request = chat(SCRIPTED_MODEL, turns)
    async with grpc.aio.insecure_channel(router or _router(stack)) as channel:
        outcome = await generate(pb_grpc.EngineStub(channel), request)
    after = engine_totals(stack.engine_addresses)
    (served,) = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if b > a]
    return served, outcome.cached_tokens


async def _prime(stack: RunningStack, engine: int, turns: list[tuple[str, str]]) -> None:
    """Serves a call on one engine directly, so its cache holds the prompt."""
    request = chat(SCRIPTED_MODEL, turns)
    async with grpc.aio.insecure_channel(stack.engine_addresses[engine]) as channel:
        await generate(pb_grpc.EngineStub(channel), request)
    routers = [router_metrics_url(stack.stack.plan)]
    await asyncio.to_thread(_until_indexes_match_engines, stack, routers)


async def test_calls_land_where_their_prefix_is_resident(scripted_stack, tmp_path) -> None:
    stack = _start(scripted_stack, tmp_path)
    await asyncio.sleep(0.5)
    for engine, group in enumerate("abc"):
        await _prime(stack, engine, [_system(group), ("user", "hello there")])
    for engine, group in enumerate("abc"):
        served, cached = await _served_by(stack, [_system(group), ("user", "another question")])
        assert served == engine, f"group {group} went to engine {served}, not {engine}"
        assert cached >= 64
    for address in stack.engine_addresses:  # the router saw each replica's cache hits
        cached = router_metric(stack, "tera_router_cached_prompt_tokens_total", replica=address)
        prompt = router_metric(stack, "tera_router_prompt_tokens_total", replica=address)
        assert 64 <= cached < prompt, (address, cached, prompt)


async def test_through_the_edge(scripted_stack, tmp_path) -> None:
    """HTTP calls carry prefix names too: the edge tokenizes as the stand-in does."""
    stack = _start(scripted_stack, tmp_path)
    await asyncio.sleep(0.5)
    turns = [_system("web"), ("user", "first")]
    owner = _not_the_fallback(stack, turns)
    await _prime(stack, owner, turns)
    before = engine_totals(stack.engine_addresses)
    messages = [{"role": r, "content": c} for r, c in turns]
    body = {"model": SCRIPTED_MODEL, "messages": messages, "max_tokens": 2}
    url = f"{stack.base_url}/chat/completions"
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
        usage = (await response.json())["usage"]
    after = engine_totals(stack.engine_addresses)
    assert [i for i in range(3) if after[i] > before[i]] == [owner]
    assert usage["prompt_tokens_details"]["cached_tokens"] >= 64


async def test_an_eviction_is_noticed(scripted_stack, tmp_path) -> None:
    stack = _start(scripted_stack, tmp_path)
    await asyncio.sleep(0.5)
    long_turns = [_system("g", 96), ("user", "x")]
    await _prime(stack, 0, long_turns)  # engine 0 holds 6 chunks of the prefix
    await _prime(stack, 1, [_system("g", 48)])  # engine 1 holds 3
    assert (await _served_by(stack, long_turns))[0] == 0
    for flood in range(3):  # 3 x 8 other chunks evict all of engine 0's
        await _prime(stack, 0, [_system(f"f{flood}", 128)])
    served, cached = await _served_by(stack, long_turns)
    assert served == 1 and cached == 48


async def test_a_prompt_being_prefilled_counts_as_work_on_its_replica(
    scripted_stack, tmp_path
) -> None:
    """The router counts a call's uncached prompt as queued prefill on its replica until
    the first message: while one engine prefills a long prompt, the next turn of a
    conversation whose whole history it holds goes to the other engine, which holds the
    system prompt (160 tokens of history to prefill there, against 400 queued)."""
    # 10 ms per uncached prompt token: the long prompt's prefill takes 4 s.
    stack = _start(
        scripted_stack, tmp_path, engines=2, prefix_cache_chunks=400, prefill_ms_per_token=10
    )
    await asyncio.sleep(0.5)
    system = _system("conv")
    conversation = [system, ("user", " ".join(f"q{i}" for i in range(160)))]
    await _prime(stack, 1, [system])
    await _prime(stack, 0, conversation)
    long_system = _system("long")
    await _prime(stack, 0, [long_system])  # so the long prompt goes to engine 0
    a = stack.engine_addresses[0]
    long_prompt = [long_system, ("user", " ".join(f"w{i}" for i in range(400)))]
    waiting = asyncio.create_task(_call(_router(stack), long_prompt))
    await asyncio.to_thread(
        wait_until,
        lambda: router_metric(stack, "tera_router_replica_prefill_tokens", replica=a) > 0,
        timeout_s=10,
        what="the long prompt counted as queued prefill",
    )
    assert router_metric(stack, "tera_router_replica_prefill_tokens", replica=a) >= 400
    served, _ = await _served_by(stack, conversation)
    assert served == 1
    await waiting
    assert router_metric(stack, "tera_router_replica_prefill_tokens") == 0


async def test_a_resumed_stream_counts_its_continuation_as_prefill(
    scripted_stack, tmp_path
) -> None:
    """A stream cut on one engine is continued on the other; until that engine answers,
    the continuation's prompt is its queued prefill, as a first attempt's is."""
    # Each call fails after 8 tokens; a continuation counts afresh, so one resume ends
    # the 12-token answer. 10 ms per uncached prompt token: each prefill takes ~3 s.
    stack = _start(
        scripted_stack,
        tmp_path,
        engines=2,
        prefix_cache_chunks=400,
        prefill_ms_per_token=10,
        fail_after_tokens=8,
    )
    await asyncio.sleep(0.5)
    turns = [_system("cut"), ("user", " ".join(f"w{i}" for i in range(240)))]
    request = chat(SCRIPTED_MODEL, turns, max_tokens=12)
    prefill = "tera_router_replica_prefill_tokens"

    def prefilling() -> set[str]:
        return {a for a in stack.engine_addresses if router_metric(stack, prefill, replica=a)}

    async with grpc.aio.insecure_channel(_router(stack)) as channel:
        call = asyncio.create_task(generate(pb_grpc.EngineStub(channel), request))
        await asyncio.to_thread(
            wait_until, prefilling, timeout_s=10, what="the first attempt's prefill"
        )
        (cut,) = prefilling()
        await asyncio.to_thread(
            wait_until,
            lambda: bool(prefilling() - {cut}),
            timeout_s=15,
            what="the continuation counted as prefill on the other engine",
        )
        (other,) = prefilling() - {cut}
        assert router_metric(stack, prefill, replica=other) >= 240
        outcome = await call
    assert outcome.completion_tokens == 12
    assert router_metric(stack, "tera_router_resumes_total") == 1
    assert router_metric(stack, prefill) == 0


async def test_a_flood_of_one_prefix_spreads(scripted_stack, tmp_path) -> None:
    # Slow streams, so the calls are all in flight together.
    stack = _start(scripted_stack, tmp_path, tokens_per_second=20)
    await asyncio.sleep(0.5)
    turns = [_system("hot"), ("user", "same again")]
    request = chat(SCRIPTED_MODEL, turns, max_tokens=20)
    before = engine_totals(stack.engine_addresses)
    async with grpc.aio.insecure_channel(_router(stack)) as channel:
        stub = pb_grpc.EngineStub(channel)
        calls = []
        for _ in range(24):
            calls.append(asyncio.create_task(generate(stub, request, call_metadata(request))))
            await asyncio.sleep(0.02)
        await asyncio.gather(*calls)
    shares = [b - a for a, b in zip(before, engine_totals(stack.engine_addresses), strict=True)]
    assert sum(shares) == 24
    assert max(shares) <= 12, f"a hot spot: {shares}"


async def test_two_routers_agree(scripted_stack, tmp_path) -> None:
    """Two routers sent the same calls at the same moment pick the same replica: their
    view comes from the engines (router B, started later, from the snapshot)."""
    # A prefill cost, so that neither call of a pair sees the other's cache entry.
    stack = _start(scripted_stack, tmp_path, prefix_cache_chunks=400, prefill_ms_per_token=0.5)
    await asyncio.sleep(0.5)
    rng = random.Random(3)
    conversations = [[_system(f"s{c}"), ("user", f"c{c}")] for c in range(6)]
    for turns in conversations:  # each on an engine the no-match fallback would not pick
        await _prime(stack, _not_the_fallback(stack, turns), turns)
    with _second_router(stack, tmp_path) as (b, b_metrics):
        metrics = [router_metrics_url(stack.stack.plan), b_metrics]
        await asyncio.to_thread(_until_routers_read_engine_loads, stack, metrics)
        agreed = 0
        for round_ in range(24):
            if rng.random() < 0.25:  # a new conversation, never seen by either
                conversations.append([_system(f"new{round_}"), ("user", "hi")])
            turns = rng.choice(conversations)
            before = engine_totals(stack.engine_addresses)
            await asyncio.gather(_call(_router(stack), turns), _call(b, turns))
            after = engine_totals(stack.engine_addresses)
            agreed += 2 in [y - x for x, y in zip(before, after, strict=True)]
            turns += [("assistant", "ok"), ("user", f"more {rng.randrange(99)} " * 20)]
            await asyncio.to_thread(_until_indexes_match_engines, stack, metrics)
            await asyncio.to_thread(_until_routers_read_engine_loads, stack, metrics)
        assert agreed / 24 >= 0.95, f"{agreed}/24"


async def test_a_hot_group_does_not_draw_new_groups_to_its_replica(
    scripted_stack, tmp_path
) -> None:
    """One group takes half the calls; six others, all of which rendezvous hashing puts
    with it, go to the quieter engine instead (the engines' admitted-call counts say
    which), so the busiest engine's share stays within 1.5x the mean; and each group
    stays where its prefix is: the cached tokens of groups pinned by hand."""
    stack = _start(scripted_stack, tmp_path, engines=2, prefix_cache_chunks=400)
    await asyncio.sleep(0.5)
    hot = _fallback(stack, [_system("hot")])
    candidates = (f"cold{i}" for i in range(1000))
    cold = [g for g in candidates if _fallback(stack, [_system(g)]) == hot][:6]
    served: Counter[int] = Counter()
    cached = pinned = 0
    seen: dict[str, set[int]] = {}  # per group: what one engine holding it all would
    for round_ in range(36):
        for group in ("hot", cold[round_ % len(cold)]):
            turns = [_system(group), ("user", f"question {round_}")]
            engine, hits = await _served_by(stack, turns)
            served[engine] += 1
            cached += hits
            pinned += _pinned_hits(seen.setdefault(group, set()), _names(turns))
        await asyncio.sleep(0.1)  # a load poll now and then (every 0.2 s)
    assert max(served.values()) <= 1.5 * 72 / 2, f"a hot spot: {served}"
    assert cached >= 0.9 * pinned, (cached, pinned)


def _pinned_hits(held: set[int], names: list[int]) -> int:
    """Cached tokens of a call on an engine that holds every earlier call of its group."""
    hits = next((i for i, name in enumerate(names) if name not in held), len(names))
    held.update(names)
    return hits * prefix_hash.CHUNK_TOKENS


def _fallback(stack: RunningStack, turns: list[tuple[str, str]]) -> int:
    """The engine rendezvous hashing picks for the prompt among all of them."""
    key = str(_names(turns)[0])
    addresses = stack.engine_addresses
    return addresses.index(max(addresses, key=lambda a: _rendezvous(key, a)))


def _not_the_fallback(stack: RunningStack, turns: list[tuple[str, str]]) -> int:
    return (_fallback(stack, turns) + 1) % len(stack.engine_addresses)


def _names(turns: list[tuple[str, str]]) -> list[int]:
    return prefix_hash.chunk_hashes(prompt_token_ids(chat(SCRIPTED_MODEL, turns)))


async def _call(router: str, turns: list[tuple[str, str]]) -> None:
    request = chat(SCRIPTED_MODEL, turns)
    async with grpc.aio.insecure_channel(router) as channel:
        await generate(pb_grpc.EngineStub(channel), request)


@contextlib.contextmanager
def _second_router(stack: RunningStack, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Router B over the stack's engines: its address and its metrics' URL, once its
    index of every engine's cache matches the engine's."""
    port, metrics_port = free_port(), free_port()
    replicas = [a for address in stack.engine_addresses for a in ("--replica", address)]
    config = str(tmp_path / "router.yaml")
    args = ["--port", str(port), "--metrics-port", str(metrics_port), "--config", config]
    second = ManagedProcess(
        "router-b", ["-m", "services.router", *args, *replicas], log_path=tmp_path / "router-b.log"
    ).start()
    try:
        address, metrics = f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
        wait_until(lambda: router_has_replicas(address, 3), timeout_s=30, watch=[second], what="B")
        _until_indexes_match_engines(stack, [metrics])
        yield address, metrics
    finally:
        second.stop()


def _resident_chunks(engine: str) -> int:
    """How many chunk names the engine's prefix cache holds: its watch's snapshot."""
    with grpc.insecure_channel(engine) as channel:
        watch = pb_grpc.EngineStub(channel).WatchPrefixCache(pb.WatchPrefixCacheRequest())
        snapshot = next(watch)  # one message while the cache holds < 4,096 names
        watch.cancel()
    assert snapshot.reset
    return len(snapshot.stored)


def _until_indexes_match_engines(stack: RunningStack, routers_metrics: list[str]) -> None:
    """Until each router's index of each engine holds as many chunks as the engine does:
    the routers have heard every event of the calls so far (while the caches are below
    capacity, as here: at capacity a store and its eviction leave the count alike)."""

    def in_step() -> bool:
        for engine in stack.engine_addresses:
            resident = _resident_chunks(engine)
            for url in routers_metrics:
                if scraped_metric(url, INDEX_CHUNKS, replica=engine) != resident:
                    return False
        return True

    wait_until(in_step, timeout_s=20, interval_s=0.05, what="the routers' indexes to catch up")


def _until_routers_read_engine_loads(stack: RunningStack, routers_metrics: list[str]) -> None:
    """Until each router has read every engine's load since the calls so far. A new
    prefix group goes to the engine that admitted fewest calls lately, by the rate each
    router reads every load_poll_interval_s: two readings either side of the last
    round (two calls) can fall either side of rate_tolerance, and two routers would
    then judge alike only by the phase of their polls (CI saw 22 of 24 agree)."""
    engines = stack.engine_addresses

    def rates(url: str) -> list[float]:
        return [scraped_metric(url, ARRIVALS, replica=engine) for engine in engines]

    engine_rates = [load.arrivals_per_s for load in engine_loads(engines)]
    before = {url: rates(url) for url in routers_metrics}

    def read_since() -> bool:
        # Each reading decays a rate, so any reading moves one above 0; a router may
        # read 0 only where the engine's own rate is 0 (not, say, a router's own
        # estimate of an engine whose calls came before that router started).
        return all(
            now != then or now == rate == 0
            for url in routers_metrics
            for now, then, rate in zip(rates(url), before[url], engine_rates, strict=True)
        )

    wait_until(
        read_since,
        timeout_s=20,
        interval_s=0.05,
        what="each router to read every engine's arrival rate since the last calls",
    )
