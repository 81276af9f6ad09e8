from __future__ import annotations

import random
from collections import Counter

import pytest

from services.router.policies import POLICIES, RouteRequest, create_policy
from services.router.policies.affinity import AffinityPolicy
from services.router.policies.cache_aware import CacheAwarePolicy
from services.router.policies.least_load import LeastLoadPolicy
from services.router.policies.p2c import PowerOfTwoChoicesPolicy
from services.router.policies.round_robin import RoundRobinPolicy
from services.router.replica import Replica
from tests.router.fakes import FakeReplica

REQUEST = RouteRequest("m")


def replicas(*loads: int) -> list[Replica]:
    return [FakeReplica(f"10.0.0.{i}:1", load) for i, load in enumerate(loads)]


def test_registry_builds_every_policy_and_rejects_unknown() -> None:
    expected = {
        "round_robin": RoundRobinPolicy,
        "least_load": LeastLoadPolicy,
        "p2c": PowerOfTwoChoicesPolicy,
        "affinity": AffinityPolicy,
        "cache_aware": CacheAwarePolicy,
    }
    assert set(POLICIES) == set(expected)
    for name, policy_type in expected.items():
        assert type(create_policy(name)) is policy_type, name
    with pytest.raises(ValueError, match="unknown policy"):
        create_policy("random-ish")


def test_round_robin_cycles() -> None:
    pool = replicas(0, 0, 0)
    policy = create_policy("round_robin")
    picks = [policy.select(pool, REQUEST).address for _ in range(6)]
    assert Counter(picks) == Counter({r.address: 2 for r in pool})


def test_least_load_picks_least_loaded() -> None:
    pool = replicas(5, 1, 3)
    assert create_policy("least_load").select(pool, REQUEST) is pool[1]


def test_p2c_never_picks_the_most_loaded_of_two() -> None:
    pool = replicas(10, 0)
    policy = PowerOfTwoChoicesPolicy(random.Random(1))
    assert all(policy.select(pool, REQUEST) is pool[1] for _ in range(20))


def test_p2c_spreads_equal_load() -> None:
    pool = replicas(0, 0, 0, 0)
    policy = PowerOfTwoChoicesPolicy(random.Random(7))
    picks = Counter(policy.select(pool, REQUEST).address for _ in range(400))
    assert len(picks) == 4 and min(picks.values()) > 50


def test_affinity_is_sticky_and_moves_only_when_needed() -> None:
    pool = replicas(0, 0, 0)
    policy = create_policy("affinity")
    keyed = [RouteRequest("m", f"user-{i}") for i in range(30)]
    first = {r.routing_key: policy.select(pool, r).address for r in keyed}
    assert first == {r.routing_key: policy.select(pool, r).address for r in keyed}
    assert len(set(first.values())) > 1, "keys spread across replicas"
    # Drop one replica: only its keys move.
    gone = pool[0].address
    survivors = pool[1:]
    moved = {
        k
        for k, a in first.items()
        if a != gone and policy.select(survivors, RouteRequest("m", k)).address != a
    }
    assert not moved


def test_affinity_falls_back_when_owner_is_overloaded() -> None:
    pool = replicas(0, 0, 0)
    policy = create_policy("affinity")
    request = RouteRequest("m", "sticky")
    owner = policy.select(pool, request)
    owner.in_flight = 50
    assert policy.select(pool, request) is not owner
