"""The fair scheduler alone: token shares by weight, class order, starvation, eviction."""

from __future__ import annotations

from collections import Counter

import pytest

from services.common.priority import priority_rank
from services.router.fairness import FairScheduler, Ticket


def ticket(tenant: str, *, weight: float = 1.0, cls: str = "standard", cost: float = 100) -> Ticket:
    return Ticket(tenant, weight, priority_rank(cls), cost)


def dispatch(scheduler: FairScheduler, n: int) -> Counter[str]:
    served: Counter[str] = Counter()
    for _ in range(n):
        t = scheduler.pop()
        assert t is not None
        served[t.tenant] += t.cost
    return served


def test_a_flooder_gets_its_share_not_its_traffic() -> None:
    s = FairScheduler(starvation_every=10)
    for _ in range(100):
        s.push(ticket("noisy"))
    for _ in range(10):
        s.push(ticket("quiet"))
    first = dispatch(s, 20)
    assert first["quiet"] == first["noisy"] == 1000  # alternate, not 10 noisy per quiet


def test_token_shares_follow_the_weights() -> None:
    s = FairScheduler(starvation_every=10)
    for _ in range(200):
        s.push(ticket("gold", weight=3))
        s.push(ticket("bronze", weight=1))
    served = dispatch(s, 200)
    assert served["gold"] / served["bronze"] == pytest.approx(3, rel=0.05)


def test_shares_are_counted_in_tokens_and_corrected_by_usage() -> None:
    s = FairScheduler(starvation_every=10)
    for _ in range(50):
        s.push(ticket("long", cost=400))
        s.push(ticket("short", cost=100))
    served = dispatch(s, 50)
    assert served["short"] == pytest.approx(served["long"], rel=0.1)
    # The estimate was 100, the stream used 1000: the tenant waits its turn for that.
    s2 = FairScheduler(starvation_every=10)
    for _ in range(6):
        s2.push(ticket("a"))
        s2.push(ticket("b"))
    first = s2.pop()
    assert first is not None and first.tenant == "a"
    s2.correct(first, 1000)  # estimated 100, the stream used 1000
    assert [t.tenant for t in (s2.pop() for _ in range(6)) if t] == ["b"] * 6


def test_idle_tenants_bank_no_credit() -> None:
    s = FairScheduler(starvation_every=10)
    for _ in range(100):
        s.push(ticket("busy"))
    dispatch(s, 100)  # busy alone: its counter climbs
    for _ in range(10):
        s.push(ticket("busy"))
        s.push(ticket("late"))  # joins at busy's counter, not at 0
    served = dispatch(s, 10)
    assert served["late"] == served["busy"]  # shares from now on, not 10 to catch up


def test_higher_classes_first_with_starvation_protection() -> None:
    s = FairScheduler(starvation_every=5)
    for _ in range(20):
        s.push(ticket("b", cls="batch"))
        s.push(ticket("i", cls="interactive"))
    order = [t.tenant for t in (s.pop() for _ in range(20)) if t]
    assert order[:4] == ["i"] * 4
    assert order.count("b") == 4  # one in every five: never starved
    assert order.count("i") == 16


def test_a_full_queue_evicts_the_lowest_class_first() -> None:
    s = FairScheduler(starvation_every=10)
    s.push(ticket("i", cls="interactive"))
    s.push(ticket("s", cls="standard"))
    s.push(old := ticket("b", cls="batch"))
    s.push(new := ticket("b", cls="batch"))
    assert s.evict_below(priority_rank("interactive")) is new
    assert s.evict_below(priority_rank("standard")) is old
    assert s.evict_below(priority_rank("standard")) is None  # nothing below standard left
    assert s.size == 2


def test_a_quiet_tenant_sees_few_requests_ahead_of_it() -> None:
    s = FairScheduler(starvation_every=10)
    for _ in range(50):
        s.push(ticket("noisy"))
    assert s.ahead(ticket("quiet")) <= 2
    assert s.ahead(ticket("noisy")) == 50
    assert s.ahead(ticket("anyone", cls="batch")) == 50  # a lower class waits for all


def test_a_preempted_stream_goes_first_uncharged_and_is_never_evicted() -> None:
    s = FairScheduler(starvation_every=10)
    s.push(queued := ticket("b", cls="batch"))
    s.charge(back := ticket("b", cls="batch"))  # dispatched once, then preempted
    served = s.counter("b")
    back.requeued = True
    s.push(back, front=True)
    assert s.evict_below(priority_rank("interactive")) is queued  # not the continuation
    assert s.evict_below(priority_rank("interactive")) is None
    assert s.pop() is back
    assert s.counter("b") == served  # charged when it first went, not again
