"""The policy interface: pick one replica among available candidates."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.router.replica import Replica


@dataclass(frozen=True)
class RouteRequest:
    model: str
    routing_key: str | None = None


class LoadBalancingPolicy(abc.ABC):
    @abc.abstractmethod
    def select(self, candidates: Sequence[Replica], request: RouteRequest) -> Replica:
        """candidates is non-empty, available and not saturated."""
