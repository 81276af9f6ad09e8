"""Which queued request of a model goes next: the scheduling policy of the fair queue
(services/router/queue.py), free of asyncio and gRPC so it can be tested alone.

Classes first: `interactive` before `standard` before `batch`, except that a waiting
lower class gets at least one dispatch in every `starvation_every`. Within a class, the
tenant with the fewest weighted tokens served goes first (a virtual token counter, as in
"Fairness in Serving Large Language Models", OSDI '24, and AIBrix's `vtc-basic`): a
dispatch charges its estimated tokens / weight, corrected by the actual usage when the
stream ends, so a tenant sending 10x the traffic gets its weight's share, not 10x. A
tenant that becomes active is lifted to the lowest counter of those waiting, so idle
time banks no credit. The counters are this router's own, or the fleet's (fair_share.py).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from services.common.priority import PRIORITIES


@dataclass(eq=False)
class Ticket:
    """One request as the queue sees it."""

    tenant: str
    weight: float
    rank: int  # index in PRIORITIES
    cost: float  # estimated tokens (prompt + expected completion)
    deadline: float | None = None  # monotonic seconds; None: no deadline
    enqueued: float = 0.0
    started: float | None = None  # when it was dispatched (took a slot)
    requeued: bool = False  # preempted, waiting to be continued: charged already
    held_s: float = 0.0  # time it held slots before it was last preempted
    charged: float = field(default=0.0, init=False)


class TenantCounters:
    """Weighted tokens served per tenant, as this router counts them."""

    def __init__(self) -> None:
        self._served: dict[str, float] = {}

    def get(self, tenant: str) -> float:
        return self._served.get(tenant, 0.0)

    def add(self, tenant: str, amount: float) -> None:
        self._served[tenant] = self.get(tenant) + amount

    def lift(self, tenant: str, floor: float) -> None:
        """Raises the tenant's counter to `floor` (never lowers it)."""
        if floor > self.get(tenant):
            self._served[tenant] = floor


class FairScheduler:
    def __init__(self, *, starvation_every: int, counters: TenantCounters | None = None) -> None:
        self._queues: list[dict[str, deque[Ticket]]] = [{} for _ in PRIORITIES]
        self._counters = counters or TenantCounters()
        self._starvation_every = starvation_every
        self._higher_in_a_row = 0
        self.size = 0

    def counter(self, tenant: str) -> float:
        return self._counters.get(tenant)

    def lengths(self) -> list[int]:
        return [sum(len(q) for q in queues.values()) for queues in self._queues]

    def push(self, ticket: Ticket, *, front: bool = False) -> None:
        """Queues `ticket` behind its tenant's others, or ahead of them (`front`: a
        preempted stream, whose caller is waiting mid-answer)."""
        if not any(ticket.tenant in queues for queues in self._queues):
            waiting = [self.counter(t) for queues in self._queues for t in queues]
            if waiting:  # newly active: no credit banked while idle
                self._counters.lift(ticket.tenant, min(waiting))
        queue = self._queues[ticket.rank].setdefault(ticket.tenant, deque())
        if front:
            queue.appendleft(ticket)
        else:
            queue.append(ticket)
        self.size += 1

    def pop(self, *, lowest_rank: int = len(PRIORITIES) - 1) -> Ticket | None:
        """The next ticket of a class at or above `lowest_rank`, charged; None if none."""
        rank = self._rank_to_serve(lowest_rank)
        if rank is None:
            return None
        return self._dispatch(rank, min(self._queues[rank], key=self.counter))

    def pop_for(self, rank: int, tenant: str) -> Ticket | None:
        """The tenant's next ticket of class `rank`, charged; None if it has none waiting.
        For a slot taken back for that tenant (fair-share preemption), which the counter
        order alone might hand to the tenant it was taken from, on a tie."""
        if tenant not in self._queues[rank]:
            return None
        return self._dispatch(rank, tenant)

    def _dispatch(self, rank: int, tenant: str) -> Ticket:
        ticket = self._take(rank, tenant, newest=False)
        if not ticket.requeued:  # a continuation was charged when it first went
            self.charge(ticket)
        return ticket

    def charge(self, ticket: Ticket) -> None:
        """Counts a dispatched ticket's estimated tokens against its tenant."""
        ticket.charged = ticket.cost
        self._counters.add(ticket.tenant, ticket.cost / ticket.weight)

    def correct(self, ticket: Ticket, actual_tokens: float) -> None:
        """The stream ended: its actual tokens replace the estimate it was charged."""
        delta = actual_tokens - ticket.charged
        ticket.charged = actual_tokens
        self._counters.add(ticket.tenant, delta / ticket.weight)

    def discard(self, ticket: Ticket) -> None:
        """Removes a ticket that leaves the queue undispatched (shed, or its caller left)."""
        queue = self._queues[ticket.rank].get(ticket.tenant)
        if queue is None or ticket not in queue:
            return
        queue.remove(ticket)
        if not queue:
            del self._queues[ticket.rank][ticket.tenant]
        self.size -= 1

    def evict_below(self, rank: int) -> Ticket | None:
        """Makes room for a ticket of class `rank` in a full queue: the newest ticket of
        the heaviest tenant in the lowest class below `rank`, removed; None if none.
        A preempted stream is never evicted: its caller has part of the answer."""
        for lower in range(len(PRIORITIES) - 1, rank, -1):
            queues = self._queues[lower]
            for tenant in sorted(queues, key=self.counter, reverse=True):
                if not queues[tenant][-1].requeued:  # continuations are at the front
                    return self._take(lower, tenant, newest=True)
        return None

    def ahead(self, ticket: Ticket) -> float:
        """About how many queued tickets would be dispatched before `ticket` if it joined
        now: every one of a higher class, and in its own class each tenant's tickets
        whose counters stay below the one `ticket` will have reached."""
        lengths = self.lengths()
        count = float(sum(lengths[: ticket.rank]))
        queues = self._queues[ticket.rank]
        own = queues.get(ticket.tenant, ())
        reached = self.counter(ticket.tenant) + (len(own) + 1) * ticket.cost / ticket.weight
        for tenant, queue in queues.items():
            if tenant == ticket.tenant:
                count += len(queue)
                continue
            head = queue[0]
            room = (reached - self.counter(tenant)) * head.weight / max(head.cost, 1.0)
            count += min(max(room, 0.0), len(queue))
        return count

    def _rank_to_serve(self, lowest_rank: int) -> int | None:
        waiting = [r for r, queues in enumerate(self._queues[: lowest_rank + 1]) if queues]
        if not waiting:
            return None
        rank = waiting[0]
        if len(waiting) > 1 and self._higher_in_a_row + 1 >= self._starvation_every:
            # Starvation protection: the lower class whose head has waited longest.
            rank = min(waiting[1:], key=self._oldest_head)
        lower_waits = any(r > rank for r in waiting)
        self._higher_in_a_row = self._higher_in_a_row + 1 if lower_waits else 0
        return rank

    def _oldest_head(self, rank: int) -> float:
        return min(queue[0].enqueued for queue in self._queues[rank].values())

    def _take(self, rank: int, tenant: str, *, newest: bool) -> Ticket:
        queue = self._queues[rank][tenant]
        ticket = queue.pop() if newest else queue.popleft()
        if not queue:
            del self._queues[rank][tenant]
        self.size -= 1
        return ticket
