"""The router's prefix index and the cache_aware policy, with fake replicas."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest

from services.common import prefix_hash
from services.common.arrivals import ArrivalRate
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.router.cache_index import PrefixIndex
from services.router.config import RouterConfig
from services.router.metrics import RouterMetrics
from services.router.policies import RouteRequest, create_policy
from services.router.policies.cache_aware import CacheAwarePolicy
from tests.router.fakes import FakeReplica


def names(group: int, chunks: int) -> list[int]:
    return prefix_hash.chunk_hashes([group] * 3 + list(range(chunks * 16)))[:chunks]


def route(prefix: list[int]) -> RouteRequest:
    return RouteRequest("m", prefix_hashes=tuple(prefix))


def fleet(n: int = 3) -> list[FakeReplica]:
    return [FakeReplica(f"10.0.0.{i}:1") for i in range(n)]


def hold(replica: FakeReplica, prefix: list[int]) -> None:
    replica.prefix_index.apply(pb.PrefixCacheEvent(stored=prefix))


def test_hashes_chain_and_round_trip_metadata() -> None:
    a = prefix_hash.chunk_hashes(list(range(40)))
    assert len(a) == 2  # the partial third chunk is not named
    assert prefix_hash.chunk_hashes(list(range(32)) + [7] * 16)[:2] == a
    assert prefix_hash.chunk_hashes([1, *range(1, 40)])[0] != a[0]
    assert prefix_hash.decode(prefix_hash.encode(a)) == tuple(a)
    assert prefix_hash.decode(b"\x01\x02") == ()


def test_index_applies_stores_evictions_resets_and_stays_bounded() -> None:
    index = PrefixIndex(capacity=4)
    p = names(1, 6)
    index.apply(pb.PrefixCacheEvent(stored=p[:3]))
    assert index.match(p) == 3
    index.apply(pb.PrefixCacheEvent(removed=[p[1]]))
    assert index.match(p) == 1  # a hole ends the cached prefix
    index.apply(pb.PrefixCacheEvent(stored=p))
    assert len(index) == 4  # the oldest names made room
    index.apply(pb.PrefixCacheEvent(reset=True, stored=p[:2]))
    assert index.match(p) == 2 and len(index) == 2


def test_routes_to_the_longest_resident_prefix() -> None:
    replicas = fleet()
    p = names(1, 8)
    hold(replicas[1], p[:2])
    hold(replicas[2], p[:6])
    policy = CacheAwarePolicy()
    assert policy.select(replicas, route(p)) is replicas[2]
    assert policy.decisions["cache_hit"] == 1


def test_follows_an_eviction() -> None:
    replicas = fleet()
    p = names(1, 8)
    hold(replicas[2], p)
    hold(replicas[0], p[:4])
    policy = CacheAwarePolicy()
    assert policy.select(replicas, route(p)) is replicas[2]
    replicas[2].prefix_index.apply(pb.PrefixCacheEvent(removed=p[:1]))
    assert policy.select(replicas, route(p)) is replicas[0]


def test_load_escape_and_hot_prefix_spreads_to_one_second_replica() -> None:
    replicas = fleet(4)
    p = names(1, 8)
    hold(replicas[0], p)
    # Calls cost nothing within the band here: the band alone bounds the holder's load.
    policy = CacheAwarePolicy(load_margin=4, load_factor=1.5, call_tokens=0)
    replicas[0].in_flight = 4  # at the edge of the band: still preferred
    assert policy.select(replicas, route(p)) is replicas[0]
    replicas[0].in_flight = 5
    escaped = {policy.select(replicas, route(p)).address for _ in range(5)}
    assert len(escaped) == 1 and escaped != {replicas[0].address}
    assert policy.decisions["load_escape"] == 5
    # The second replica now holds the prefix too: equal matches go to the less loaded.
    second = next(r for r in replicas if r.address in escaped)
    hold(second, p)
    second.in_flight = 2
    assert policy.select(replicas, route(p)) is second


def test_flood_of_one_prefix_never_builds_a_hot_spot() -> None:
    """Simulated: every chosen replica caches the prefix and keeps the request."""
    replicas = fleet(4)
    p = names(1, 8)
    policy = CacheAwarePolicy(load_margin=2, load_factor=1.5)
    for _ in range(40):
        chosen = policy.select(replicas, route(p))
        chosen.in_flight += 1
        hold(chosen, p)
    loads = [r.in_flight for r in replicas]
    assert max(loads) - min(loads) <= 3, loads


def test_a_conversation_moves_when_the_queue_costs_more_than_its_missing_turns() -> None:
    """A conversation's newest turns on a busy replica: a quieter one holding all but the
    last few chunks (its system prompt) takes it once the busy one's calls cost more than
    those chunks' prefill; one holding much less does not."""
    replicas = fleet(2)
    p = names(1, 50)
    hold(replicas[0], p)  # the whole conversation
    hold(replicas[1], p[:46])  # its system prompt: all but the newest 4 chunks (64 tokens)
    # 64 tokens to prefill weigh 128; a call in flight 64: two calls tie, the longer
    # match keeps it.
    replicas[0].in_flight = 2
    assert CacheAwarePolicy().select(replicas, route(p)) is replicas[0]
    replicas[0].in_flight = 3
    policy = CacheAwarePolicy()
    assert policy.select(replicas, route(p)) is replicas[1]
    assert policy.decisions == Counter({"hot_spread": 1})
    assert CacheAwarePolicy(call_tokens=32).select(replicas, route(p)) is replicas[0]
    assert CacheAwarePolicy(prefill_weight=1).select(replicas, route(p)) is replicas[1]
    replicas[1].prefix_index.apply(pb.PrefixCacheEvent(removed=[p[20]]))  # 20 of 50 left
    assert CacheAwarePolicy().select(replicas, route(p)) is replicas[0]
    for bad in ({"call_tokens": -1}, {"prefill_weight": -1}):
        with pytest.raises(ValueError, match="at least 0"):
            CacheAwarePolicy.from_options(bad)


def test_a_prompt_queued_for_prefill_counts_as_work_ahead() -> None:
    """The router's own queued prefill on a replica (calls not yet answered) weighs
    like the prefill of the prompt itself: a long cold prompt just sent to the holder
    of a conversation sends the conversation's next turn to its system prompt's other
    holder, and back once that prompt is answered."""
    replicas = fleet(2)
    p = names(1, 50)
    hold(replicas[0], p)
    hold(replicas[1], p[:40])  # 10 chunks (160 tokens, weighing 320) short
    assert CacheAwarePolicy().select(replicas, route(p)) is replicas[0]
    with replicas[0].prefilling(400):
        assert CacheAwarePolicy().select(replicas, route(p)) is replicas[1]
    assert replicas[0].prefill_tokens == 0
    assert CacheAwarePolicy().select(replicas, route(p)) is replicas[0]


def test_a_hot_prefix_held_twice_is_shared_by_load_not_by_history() -> None:
    """Simulated: both replicas hold a hot system prompt, every session's history starts
    on the first; each chosen replica keeps its request and caches the session's turn."""
    replicas = fleet(2)
    system = names(1, 45)
    sessions = [system + names(100 + i, 5) for i in range(6)]
    for replica in replicas:
        hold(replica, system)
    for prefix in sessions:
        hold(replicas[0], prefix)
    policy = CacheAwarePolicy()
    for turn in range(16):
        prefix = sessions[turn % len(sessions)]
        chosen = policy.select(replicas, route(prefix))
        chosen.in_flight += 1
        hold(chosen, prefix)
    loads = [r.in_flight for r in replicas]
    assert max(loads) - min(loads) <= 2, loads  # by cache alone: 16 on the first
    assert policy.decisions["hot_spread"] >= 1
    assert policy.decisions["cache_hit"] + policy.decisions["hot_spread"] == 16


def test_new_prefixes_spread_and_ties_are_deterministic() -> None:
    replicas = fleet(4)
    picks = Counter(
        CacheAwarePolicy().select(replicas, route(names(g, 4))).address for g in range(200)
    )
    assert len(picks) == 4 and min(picks.values()) > 25
    # Two routers (two policy objects) agree on a new prefix and on a tie.
    p = names(7, 4)
    assert CacheAwarePolicy().select(replicas, route(p)) is CacheAwarePolicy().select(
        list(reversed(replicas)), route(p)
    )
    hold(replicas[1], p)
    hold(replicas[3], p)
    assert CacheAwarePolicy().select(replicas, route(p)) is CacheAwarePolicy().select(
        list(reversed(replicas)), route(p)
    )


def test_without_prefix_names_uses_routing_key_then_load() -> None:
    replicas = fleet(3)
    replicas[0].in_flight = 1
    policy = CacheAwarePolicy()
    keyed = RouteRequest("m", routing_key="conversation-9")
    assert len({policy.select(replicas, keyed).address for _ in range(5)}) == 1
    assert policy.select(replicas, RouteRequest("m")) is replicas[1]


def test_options_come_from_router_config() -> None:
    config = RouterConfig(policy="cache_aware", policy_options={"cache_aware": {"load_margin": 9}})
    policy = create_policy(config.policy, config.policy_options)
    assert isinstance(policy, CacheAwarePolicy) and policy._margin == 9
    with pytest.raises(ValueError):
        RouterConfig(policy="cache_aware", policy_options={"cache_aware": {"nope": 1}})


def test_metrics_show_index_size_and_decisions_by_reason() -> None:
    replicas = fleet(2)
    hold(replicas[0], names(1, 3))
    replicas[1].reported = pb.LoadReport(arrivals_per_s=2.5)
    policy = CacheAwarePolicy()
    policy.select(replicas, route(names(1, 3)))
    policy.select(replicas, RouteRequest("m"))
    seen = {
        r.address: SimpleNamespace(
            available=True,
            models={},
            in_flight=0,
            prefill_tokens=48 * i,
            breaker=SimpleNamespace(total_ejections=0),
            prefix_index=r.prefix_index,
            arrivals_per_s=r.arrivals_per_s,
        )
        for i, r in enumerate(replicas)
    }
    metrics = RouterMetrics()
    metrics.watch(SimpleNamespace(replicas=seen))  # type: ignore[arg-type]
    metrics.watch_policies(lambda: [policy])
    text = generate_latest(metrics.registry).decode()
    assert 'tera_router_prefix_index_chunks{replica="10.0.0.0:1"} 3.0' in text
    assert 'tera_router_replica_prefill_tokens{replica="10.0.0.1:1"} 48.0' in text
    assert 'tera_router_replica_arrivals_per_s{replica="10.0.0.1:1"} 2.5' in text
    assert 'tera_router_route_decisions_total{reason="cache_hit"} 1.0' in text
    assert 'tera_router_route_decisions_total{reason="no_prefix"} 1.0' in text


def test_default_policy_is_cache_aware_and_spreads_calls_without_prefix_info() -> None:
    """A router left at its default, given calls that carry neither names nor a routing
    key (a model with no tokenizer at the edge, a bare gRPC caller): load decides."""
    config = RouterConfig()
    policy = create_policy(config.policy, config.policy_options)
    assert isinstance(policy, CacheAwarePolicy)
    replicas = fleet(3)
    replicas[0].in_flight = 3
    served: Counter[str] = Counter()
    for _ in range(30):  # calls that stay in flight, as under load
        chosen = policy.select(replicas, RouteRequest("m"))
        chosen.in_flight += 1
        served[chosen.address] += 1
    assert sorted(r.in_flight for r in replicas) == [11, 11, 11]
    assert served[replicas[0].address] == 8


def arriving(replica: FakeReplica, per_s: float, seconds: float = 30.0) -> None:
    """Feeds the replica's estimate reports of a steady rate, one a second."""
    clock = iter(range(int(seconds) + 1))
    replica.arrivals = ArrivalRate(clock=lambda: float(next(clock)))
    for second in range(int(seconds) + 1):
        replica.arrivals.observe(round(per_s * second))


def test_arrival_rate_follows_the_engines_counter() -> None:
    now = [0.0]
    rate = ArrivalRate(half_life_s=10, clock=lambda: now[0])
    rate.observe(1000)  # the first report is only a base: calls before it are old
    assert rate.per_s == 0
    for second in range(1, 6):
        now[0] = second
        rate.observe(1000 + 4 * second)
    assert rate.per_s == pytest.approx(4)  # no bias towards its start at zero
    for second in range(6, 36):  # three half-lives at 1 call/s
        now[0] = second
        rate.observe(1020 + (second - 5))
    assert 1.05 < rate.per_s < 1.2  # the old rate's weight halved three times
    settled = rate.per_s
    now[0] += 1
    rate.observe(3)  # the engine restarted: a new base, not a negative rate
    assert rate.per_s == settled


def test_routers_started_apart_read_the_engines_own_rate() -> None:
    """One router saw a burst the other started after; while the engine reports its own
    rate both use it, and without it each falls back on what it has seen."""
    now = [0.0]
    early, late = fleet(2)
    early.arrivals = ArrivalRate(clock=lambda: now[0])
    late.arrivals = ArrivalRate(clock=lambda: now[0])
    early.record_load(pb.LoadReport(total_requests=0))
    now[0] = 2.0
    early.record_load(pb.LoadReport(total_requests=40))  # the burst: 20 calls/s
    late.record_load(pb.LoadReport(total_requests=40))
    now[0] = 4.0
    early.record_load(pb.LoadReport(total_requests=42, arrivals_per_s=3.5))
    late.record_load(pb.LoadReport(total_requests=42, arrivals_per_s=3.5))
    assert early.arrivals_per_s == late.arrivals_per_s == 3.5
    now[0] = 6.0
    early.record_load(pb.LoadReport(total_requests=44))
    late.record_load(pb.LoadReport(total_requests=44))
    assert late.arrivals_per_s == pytest.approx(1.0)  # all it has seen
    assert early.arrivals_per_s > 5  # the burst still weighs


def test_a_new_group_goes_to_the_replica_with_the_least_recent_traffic() -> None:
    """A hot group keeps its replica busy: every new group lands on the other, whatever
    its hash, until their rates tie."""
    replicas = fleet(2)
    arriving(replicas[0], per_s=1.0)
    arriving(replicas[1], per_s=0.5)
    policy = CacheAwarePolicy()
    picks = {policy.select(replicas, route(names(g, 4))).address for g in range(40)}
    assert picks == {replicas[1].address}
    assert policy.decisions["no_match"] == 40
    hold(replicas[0], names(1, 4))  # a cache hit still wins over the rate
    assert policy.select(replicas, route(names(1, 4))) is replicas[0]


def test_rates_within_the_tolerance_tie_and_rendezvous_decides() -> None:
    """Two routers whose estimates differ a little (they poll at different moments), or
    an idle fleet, place new groups by the prefix's hash: on both replicas, the same."""
    router_a, router_b = fleet(2), list(reversed(fleet(2)))
    assert_place_alike(router_a, router_b)  # no reports at all
    arriving(router_a[0], 1.0)
    arriving(router_a[1], 0.9)
    arriving(router_b[1], 0.9)  # B saw A's busier replica as the quieter one
    arriving(router_b[0], 1.0)
    assert_place_alike(router_a, router_b)


def assert_place_alike(router_a: list[FakeReplica], router_b: list[FakeReplica]) -> None:
    picks: Counter[str] = Counter()
    for g in range(60):
        p = route(names(g, 4))
        a, b = CacheAwarePolicy().select(router_a, p), CacheAwarePolicy().select(router_b, p)
        assert a.address == b.address
        picks[a.address] += 1
    assert len(picks) == 2 and min(picks.values()) > 15, picks


def test_decision_cost_stays_under_a_third_of_a_millisecond() -> None:
    replicas = fleet(8)
    for i, r in enumerate(replicas):
        hold(r, names(i, 40))
        arriving(r, per_s=i)
    policy = CacheAwarePolicy()
    requests = [route(names(g, 75)) for g in range(16)]  # 1,200-token prompts
    costs = []
    for request in requests * 20:
        started = time.perf_counter()
        policy.select(replicas, request)
        costs.append(time.perf_counter() - started)
    assert statistics.median(costs) < 0.3e-3
