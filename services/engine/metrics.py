"""Engine metrics: vLLM's own Prometheus metrics (it registers them in the default
registry) re-exposed as they are, plus admission figures read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.common.gc_heap import expose_gc_metrics
from services.engine.admission import InFlightLimit
from services.engine.backends.base import Backend


class _EngineCollector(Collector):
    def __init__(self, admission: InFlightLimit, backend: Backend) -> None:
        self._admission = admission
        self._backend = backend

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        load = self._backend.load()
        yield GaugeMetricFamily(
            "tera_engine_in_flight", "Calls being served", value=self._admission.in_flight
        )
        yield GaugeMetricFamily(
            "tera_engine_max_in_flight", "Admission limit", value=self._admission.max_in_flight
        )
        yield CounterMetricFamily(
            "tera_engine_admitted", "Calls admitted", value=self._admission.admitted_total
        )
        yield GaugeMetricFamily(
            "tera_engine_running", "Requests the backend computes", value=load.running
        )
        yield GaugeMetricFamily(
            "tera_engine_waiting", "Requests queued in the backend", value=load.waiting
        )
        yield GaugeMetricFamily(
            "tera_engine_kv_cache_usage", "KV cache in use (0..1)", value=load.kv_cache_usage
        )


def serve_metrics(port: int, host: str, admission: InFlightLimit, backend: Backend) -> None:
    REGISTRY.register(_EngineCollector(admission, backend))
    expose_gc_metrics(REGISTRY)
    start_http_server(port, addr=host, registry=REGISTRY)
