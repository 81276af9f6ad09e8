"""Metrics of the fair queue: its length and wait per model and class, sheds by reason,
tokens dispatched per tenant, preemptions by class, and syncs of the shared counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.router.metrics import LATENCY_BUCKETS


class QueueMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.length = Gauge(
            "tera_router_queue_length",
            "Requests waiting for a replica, by model and class",
            ["model", "priority"],
            registry=registry,
        )
        self.wait = Histogram(
            "tera_router_queue_wait_seconds",
            "Time requests waited in the queue before a replica took them",
            ["model", "priority"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.shed = Counter(
            "tera_router_shed",
            "Requests refused by the queue, by model, class and reason",
            ["model", "priority", "reason"],
            registry=registry,
        )
        self.tokens = Counter(
            "tera_router_dispatched_tokens",
            "Tokens dispatched (estimated, corrected by usage), by model and tenant",
            ["model", "tenant"],
            registry=registry,
        )
        self.preemptions = Counter(
            "tera_router_preemptions",
            "Streams preempted to free a slot for a higher class, by model, the preempted "
            "stream's class (priority) and the class it gave way to (by)",
            ["model", "priority", "by"],
            registry=registry,
        )
        self.share_syncs = Counter(
            "tera_router_fair_syncs",
            "Round trips syncing the fair queue's counters with the other routers through"
            " Redis, by outcome (ok, failed: scheduling on this router's counters meanwhile)",
            ["outcome"],
            registry=registry,
        )
