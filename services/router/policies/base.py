"""The policy interface: pick one replica among available candidates."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from services.common import metadata, prefix_hash


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
    # Names of the prompt's prefix chunks (services.common.prefix_hash), if the caller
    # sent them.
    prefix_hashes: tuple[int, ...] = ()

    @classmethod
    def from_metadata(cls, model: str, headers: Mapping[str, Any]) -> RouteRequest:
        names = headers.get(prefix_hash.METADATA_KEY)
        return cls(
            model,
            headers.get(metadata.ROUTING_KEY),
            prefix_hash.decode(names) if isinstance(names, bytes) else (),
        )


class LoadBalancingPolicy(abc.ABC):
    @classmethod
    def from_options(cls, options: dict[str, Any]) -> LoadBalancingPolicy:
        """Built from the router config's `policy_options` for its name."""
        if options:
            raise ValueError(f"{cls.__name__} takes no options, got {sorted(options)}")
        return cls()

    @abc.abstractmethod
    def select(self, candidates: Sequence[R], request: RouteRequest) -> R:
        """candidates is non-empty, available and not saturated."""
