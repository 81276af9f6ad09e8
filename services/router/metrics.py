"""Router metrics (Prometheus): outcomes and retries as counters; replica state read from
the pool at scrape time, so it is never stale."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.common.gc_heap import expose_gc_metrics
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.router.pool import ReplicaPool

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        expose_gc_metrics(self.registry)
        counter = functools.partial(Counter, registry=self.registry)
        self.requests = counter(
            "tera_router_requests", "Calls relayed, by model and final gRPC code", ["model", "code"]
        )
        self.retries = counter(
            "tera_router_retries", "Attempts retried on another replica, by reason", ["reason"]
        )
        self.retry_budget_exhausted = counter(
            "tera_router_retry_budget_exhausted",
            "Retries not attempted because the retry budget was empty, by model",
            ["model"],
        )
        self.retry_budget = Gauge(
            "tera_router_retry_budget_tokens",
            "Retries the retry budget allows now (each request deposits budget_ratio)",
            registry=self.registry,
        )
        # Not failures: the router waits on when no retry could go elsewhere. A rise says
        # prefills queue past first_message_timeout_s (too few replicas, or too short a limit).
        self.first_message_overdue = counter(
            "tera_router_first_message_overdue",
            "Attempts still awaited past first_message_timeout_s, with no replica or retry "
            "budget to move them to, by model",
            ["model"],
        )
        self.hedges = counter(
            "tera_router_hedges", "Hedge attempts sent to a second replica, by model", ["model"]
        )
        self.hedge_wins = counter(
            "tera_router_hedge_wins", "Hedged calls whose hedge answered first, by model", ["model"]
        )
        self.hedge_cancelled = counter(
            "tera_router_hedge_cancelled",
            "Attempts cancelled because the other one of a hedged pair answered first",
            ["model"],
        )
        self.resumes = counter(
            "tera_router_resumes",
            "Streams continued on another replica after a cut, by reason",
            ["reason"],
        )
        # Their ratio per replica is how much of its prefill the engines' caches saved:
        # the figure cache_aware routing is for (and what a cold replica lacks).
        self.prompt_tokens = counter(
            "tera_router_prompt_tokens",
            "Prompt tokens of completed Generate calls, by replica that served them",
            ["replica"],
        )
        self.cached_prompt_tokens = counter(
            "tera_router_cached_prompt_tokens",
            "Of those, tokens the replica's prefix cache already held",
            ["replica"],
        )
        histogram = functools.partial(Histogram, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.resume_gap = histogram(
            "tera_router_resume_gap_seconds",
            "Time from a stream's cut to the next message of its continuation",
        )
        self.first_message = histogram(
            "tera_router_first_message_seconds", "Time to the first response message", ["model"]
        )

    def count_prompt(self, replica: str, usage: pb.Usage | None) -> None:
        if usage is not None:
            self.prompt_tokens.labels(replica).inc(usage.prompt_tokens)
            self.cached_prompt_tokens.labels(replica).inc(usage.cached_tokens)

    def watch(self, pool: ReplicaPool) -> None:
        self.registry.register(_ReplicaCollector(pool))

    def watch_policies(self, policies: Callable[[], Iterable[Any]]) -> None:
        """Decisions by reason of the policies that count them (cache_aware)."""
        self.registry.register(_DecisionCollector(policies))

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
        prefix = GaugeMetricFamily(
            "tera_router_prefix_index_chunks",
            "Prefix-cache chunks an engine reports resident, as the router's index holds them",
            labels=["replica"],
        )
        prefill = GaugeMetricFamily(
            "tera_router_replica_prefill_tokens",
            "Uncached prompt tokens this router sent a replica that it has not answered yet "
            "(the queued prefill cache_aware weighs)",
            labels=["replica"],
        )
        arrivals = GaugeMetricFamily(
            "tera_router_replica_arrivals_per_s",
            "Calls a replica's engine admitted per second recently, from every router (the "
            "engine's own figure when it reports one): where cache_aware places new groups",
            labels=["replica"],
        )
        for address, replica in sorted(self._pool.replicas.items()):
            up.add_metric([address], 1.0 if replica.available else 0.0)
            in_flight.add_metric([address], replica.in_flight)
            prefill.add_metric([address], replica.prefill_tokens)
            arrivals.add_metric([address], replica.arrivals_per_s)
            ejections.add_metric([address], replica.breaker.total_ejections)
            index = getattr(replica, "prefix_index", None)
            if index is not None:
                prefix.add_metric([address], len(index))
        yield from (up, in_flight, prefill, arrivals, ejections, prefix)
        yield self._ready_by_model()

    def _ready_by_model(self) -> GaugeMetricFamily:
        """Replicas able to serve each model now: 0 while every replica of a known model
        is down or ejected (the model stays known while its replicas stay in the pool)."""
        ready = GaugeMetricFamily(
            "tera_router_model_ready_replicas",
            "Replicas serving and not ejected, per model",
            labels=["model"],
        )
        counts: dict[str, int] = {}
        for replica in self._pool.replicas.values():
            for model in replica.models:
                counts[model] = counts.get(model, 0) + replica.available
        for model, count in sorted(counts.items()):
            ready.add_metric([model], count)
        return ready


class _DecisionCollector(Collector):
    def __init__(self, policies: Callable[[], Iterable[Any]]) -> None:
        self._policies = policies

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "tera_router_route_decisions",
            "cache_aware decisions by reason "
            "(cache_hit, hot_spread, load_escape, no_match, no_prefix)",
            labels=["reason"],
        )
        totals: dict[str, int] = {}
        for policy in self._policies():
            for reason, count in getattr(policy, "decisions", {}).items():
                totals[reason] = totals.get(reason, 0) + count
        for reason, count in sorted(totals.items()):
            family.add_metric([reason], count)
        yield family
