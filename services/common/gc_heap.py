"""The cyclic garbage collector in a serving process: the start-up heap frozen once the
process is ready, and every collection's pause measured.

A full (generation 2) collection walks every object the collector tracks, and a serving
process holds hundreds of thousands from start-up that never die (modules, grpc and
protobuf descriptors, aiohttp's and pydantic's machinery; in the engine, vLLM's front end
and its tokenizer). The walk stops the event loop, so it lands on whichever first token or
relayed token is due. `gc.freeze` moves them to a generation the collector never visits;
reference counting still frees them. vLLM's API server and EngineCore and SGLang's
processes do the same after start-up (vllm-project/vllm#12287, #24008;
sgl-project/sglang#34999); Tera's engine holds vLLM's front end in a process of its own,
which vLLM's freeze does not reach.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger("tera.gc")

FREEZE_ENV = "TERA_GC_FREEZE"
_PAUSE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

# Per process, whatever registries show them (the edge's, the router's, the engine's).
_pauses = Histogram(
    "tera_gc_pause_seconds",
    "Cyclic garbage collections by generation: how long each stopped the process",
    ["generation"],
    buckets=_PAUSE_BUCKETS,
    registry=None,
)
_frozen = Gauge(
    "tera_gc_frozen_objects",
    "Objects frozen out of the collector's reach once the process was ready",
    registry=None,
)


class _Pauses:
    """A gc.callbacks entry: times each collection from its start to its stop.

    A collection can start inside any allocation, e.g. in prometheus-client's `labels()`
    while it holds the histogram's lock: the children are looked up here, once, so the
    callback only takes their value locks, inside which nothing allocates a tracked
    object (no collection can start there)."""

    def __init__(self) -> None:
        self._by_generation = [_pauses.labels(str(g)) for g in range(3)]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._by_generation[info["generation"]].observe(time.perf_counter() - self._started)


class _GCCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from _pauses.collect()
        yield from _frozen.collect()


_watch: _Pauses | None = None


def expose_gc_metrics(registry: CollectorRegistry) -> None:
    """Shows the process's collections and frozen heap in `registry`; the pauses are
    measured from the first call on, once however many registries show them."""
    global _watch
    if _watch is None:
        _watch = _Pauses()
        gc.callbacks.append(_watch)
    registry.register(_GCCollector())


def freeze_startup_heap() -> int:
    """Freezes every object alive now, after a full collection so that no garbage is
    frozen with them; call it once the process is ready to serve. Returns how many.
    TERA_GC_FREEZE=0 leaves the heap as it is (to compare, or should a deployment's
    frozen objects ever need the collector: a frozen cycle is never freed)."""
    if os.environ.get(FREEZE_ENV, "1") == "0":
        log.info("%s=0: the start-up heap stays in the collector's reach", FREEZE_ENV)
        return 0
    started = time.perf_counter()
    gc.collect()
    walk_ms = (time.perf_counter() - started) * 1000
    gc.freeze()
    frozen = gc.get_freeze_count()
    _frozen.set(frozen)
    log.info(
        "froze the start-up heap: %d objects, which each full collection walked (%.0f ms just now)",
        frozen,
        walk_ms,
    )
    return frozen
