"""Router metrics (Prometheus): outcomes and retries as counters; replica state read from
the pool at scrape time, so it is never stale."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.router.pool import ReplicaPool

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "tera_router_requests",
            "Calls relayed, by model and final gRPC code",
            ["model", "code"],
            registry=self.registry,
        )
        self.retries = Counter(
            "tera_router_retries",
            "Attempts retried on another replica, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.resumes = Counter(
            "tera_router_resumes",
            "Streams continued on another replica after a cut, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.resume_gap = Histogram(
            "tera_router_resume_gap_seconds",
            "Time from a stream's cut to the next message of its continuation",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_message = Histogram(
            "tera_router_first_message_seconds",
            "Time to the first response message",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def watch(self, pool: ReplicaPool) -> None:
        self.registry.register(_ReplicaCollector(pool))

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        start_http_server(port, addr=host, registry=self.registry)


class _ReplicaCollector(Collector):
    def __init__(self, pool: ReplicaPool) -> None:
        self._pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        up = GaugeMetricFamily(
            "tera_router_replica_up",
            "1 while a replica is serving and not ejected",
            labels=["replica"],
        )
        in_flight = GaugeMetricFamily(
            "tera_router_replica_in_flight", "Calls in flight per replica", labels=["replica"]
        )
        ejections = CounterMetricFamily(
            "tera_router_replica_ejections", "Times a replica was ejected", labels=["replica"]
        )
        for address, replica in sorted(self._pool.replicas.items()):
            up.add_metric([address], 1.0 if replica.available else 0.0)
            in_flight.add_metric([address], replica.in_flight)
            ejections.add_metric([address], replica.breaker.total_ejections)
        yield up
        yield in_flight
        yield ejections
