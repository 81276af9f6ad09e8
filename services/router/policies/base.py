"""The policy interface: pick one replica among available candidates."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar


class Candidate(Protocol):
    """What a policy may read of a replica (services.router.replica.Replica)."""

    address: str
    requests: int

    def load_score(self) -> float: ...


R = TypeVar("R", bound=Candidate)


@dataclass(frozen=True)
class RouteRequest:
    model: str
    routing_key: str | None = None


class LoadBalancingPolicy(abc.ABC):
    @abc.abstractmethod
    def select(self, candidates: Sequence[R], request: RouteRequest) -> R:
        """candidates is non-empty, available and not saturated."""
