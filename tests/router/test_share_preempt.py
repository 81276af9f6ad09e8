"""Fair-share preemption's choice alone (services/router/share_preempt.py): shares by
weight, the victim guard, and the minimum run time."""

from __future__ import annotations

from collections import Counter

import pytest

from services.router.fairness import Ticket
from services.router.preempt import Slot
from services.router.share_preempt import ClassLoad, plan

NOW = 100.0
STANDARD = 1


def running(tenant: str, weight: float, started: list[float]) -> set[Slot]:
    """Committed streams of a tenant, dispatched at the given times."""
    slots = set()
    for at in started:
        ticket = Ticket(tenant=tenant, weight=weight, rank=STANDARD, cost=10, started=at)
        slots.add(Slot(ticket, call=object()))  # type: ignore[arg-type]
    return slots


def load(held: dict[str, int], waiting: dict[str, int], weights: dict[str, float]) -> ClassLoad:
    return ClassLoad(Counter(held), Counter(waiting), weights)


def test_a_waiting_heavy_tenant_takes_slots_up_to_its_weighted_share_only() -> None:
    """Four slots, gold (weight 3) holds one, bronze (1) three: gold's share is 3, so two
    of bronze's streams go, the latest first, though gold has three waiting."""
    slots = running("bronze", 1, [90.0, 95.0, 97.0]) | running("gold", 3, [91.0])
    state = load({"gold": 1, "bronze": 3}, {"gold": 3, "bronze": 2}, {"gold": 3, "bronze": 1})
    chosen, wake = plan(state, slots, STANDARD, max_times=2, min_run_s=0.2, now=NOW)
    assert [(s.ticket.started, tenant) for s, tenant in chosen] == [(97.0, "gold"), (95.0, "gold")]
    assert wake is None


def test_streams_younger_than_the_minimum_run_wait_to_come_of_age() -> None:
    """The latest stream is too young: the older one goes now; when every stream over the
    share is too young, none goes, and the plan says when to look again."""
    slots = running("noisy", 1, [NOW - 1.0, NOW - 0.05])
    state = load({"noisy": 2}, {"quiet": 1}, {"noisy": 1, "quiet": 1})
    chosen, _ = plan(state, slots, STANDARD, max_times=2, min_run_s=0.2, now=NOW)
    assert [s.ticket.started for s, _ in chosen] == [NOW - 1.0]
    young = running("noisy", 1, [NOW - 0.1, NOW - 0.05])
    state = load({"noisy": 2}, {"quiet": 1}, {"noisy": 1, "quiet": 1})
    chosen, wake = plan(state, young, STANDARD, max_times=2, min_run_s=0.2, now=NOW)
    assert chosen == [] and wake == pytest.approx(NOW + 0.1)
