"""Request classes, highest first. The router's fair queue dispatches by them
(router/fairness.py); the engine gives vLLM a class's rank as the request's scheduling
priority, which vLLM also orders lowest first."""

from __future__ import annotations

from typing import Literal, get_args

Priority = Literal["interactive", "standard", "batch"]
PRIORITIES: tuple[Priority, ...] = get_args(Priority)  # dispatch order
DEFAULT_PRIORITY: Priority = "standard"
DEFAULT_RANK = PRIORITIES.index(DEFAULT_PRIORITY)


def priority_rank(name: str | None) -> int:
    """The class's index in PRIORITIES; an unknown or missing name is `standard`."""
    return PRIORITIES.index(name) if name in PRIORITIES else DEFAULT_RANK
