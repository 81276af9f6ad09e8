"""Replica selection policies, one module each, built by name from config."""

from __future__ import annotations

from typing import Any

from services.router.policies.affinity import AffinityPolicy
from services.router.policies.base import LoadBalancingPolicy, RouteRequest
from services.router.policies.cache_aware import CacheAwarePolicy
from services.router.policies.least_load import LeastLoadPolicy
from services.router.policies.p2c import PowerOfTwoChoicesPolicy
from services.router.policies.round_robin import RoundRobinPolicy

POLICIES: dict[str, type[LoadBalancingPolicy]] = {
    "round_robin": RoundRobinPolicy,
    "least_load": LeastLoadPolicy,
    "p2c": PowerOfTwoChoicesPolicy,
    "affinity": AffinityPolicy,
    "cache_aware": CacheAwarePolicy,
}


def check_policy_name(name: str) -> str:
    """The name, if a policy has it; config validation and create_policy both ask here."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}")
    return name


def create_policy(
    name: str, options: dict[str, dict[str, Any]] | None = None
) -> LoadBalancingPolicy:
    """options: knobs per policy name (the router config's policy_options)."""
    return POLICIES[check_policy_name(name)].from_options((options or {}).get(name, {}))


__all__ = ["POLICIES", "LoadBalancingPolicy", "RouteRequest", "check_policy_name", "create_policy"]
