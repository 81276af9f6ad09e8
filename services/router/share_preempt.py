"""Fair-share preemption within a class: a request that waits while its tenant holds
fewer of the model's slots than its weighted share, among the tenants active in its
class, takes a slot from a tenant of that class holding more than its share.

Without it a same-class request waits for a whole stream to end, however many slots
the other tenant holds (the fair queue only orders who goes next). Guards against
thrash: the victim's tenant keeps at least its share after losing the slot (so it never
takes the slot back), a stream runs `min_run_s` before it yields for fairness (its
prefill is not thrown away at once), and `max_preemptions` holds as for classes. Pure
logic over preempt.py's slots, so it can be tested alone.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from services.router.preempt import Slot, preemptable


@dataclass
class ClassLoad:
    """One class of one model, as fair-share preemption sees it."""

    held: Counter[str]  # slots per tenant: held or promised, less those being given up
    waiting: Counter[str]  # waiting requests per tenant with no slot promised to them
    weights: dict[str, float]

    def shares(self) -> dict[str, float]:
        """Each active tenant's weighted share of the slots the class holds."""
        active = {t for t, n in (self.held + self.waiting).items() if n > 0}
        total = sum(self.weights.get(t, 1.0) for t in active)
        slots = sum(self.held.values())
        return {t: slots * self.weights.get(t, 1.0) / total for t in active}


def plan(
    load: ClassLoad, running: set[Slot], rank: int, max_times: int, min_run_s: float, now: float
) -> tuple[list[tuple[Slot, str]], float | None]:
    """The streams to preempt now, each with the tenant it yields to, and when a stream
    too young to preempt yet comes of age (None: no reason to look again)."""
    shares, chosen, later = load.shares(), [], []
    if sum(load.held.values()) <= 0:
        return chosen, None  # the class holds no slot: nothing to share out
    taken: set[Slot] = set()
    waiting = [t for t, n in load.waiting.items() if n > 0]
    for tenant in sorted(waiting, key=lambda t: load.held[t] / shares[t]):
        while load.waiting[tenant] > 0 and load.held[tenant] < shares[tenant]:
            over = [
                s
                for s in running
                if preemptable(s, max_times)
                and s not in taken
                and s.ticket.rank == rank
                and s.ticket.tenant != tenant
                and load.held[s.ticket.tenant] - 1 >= shares[s.ticket.tenant]
            ]
            grown = [s for s in over if now - (s.ticket.started or now) >= min_run_s]
            if not grown:
                later += [(s.ticket.started or now) + min_run_s for s in over]
                break
            slot = max(grown, key=_most_over(load, shares))
            chosen.append((slot, tenant))
            taken.add(slot)
            load.held[slot.ticket.tenant] -= 1
            load.held[tenant] += 1
            load.waiting[tenant] -= 1
    return chosen, min(later, default=None)


def _most_over(load: ClassLoad, shares: dict[str, float]):
    """The tenant furthest over its share first; of its streams, the one dispatched last
    (the least done, so the least to replay as prompt)."""

    def key(slot: Slot) -> tuple[float, float]:
        tenant = slot.ticket.tenant
        return load.held[tenant] / shares[tenant], slot.ticket.started or 0.0

    return key
