"""Replica state read at scrape time: ready replicas per model drop to 0 (not vanish)
when every replica of a model is down, so an alert can fire on it."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import generate_latest

from services.router.metrics import RouterMetrics


def _replica(available: bool, *models: str) -> SimpleNamespace:
    return SimpleNamespace(
        available=available,
        models=dict.fromkeys(models),
        in_flight=0,
        prefill_tokens=0,
        arrivals_per_s=0.0,
        breaker=SimpleNamespace(total_ejections=0),
    )


def test_ready_replicas_per_model() -> None:
    pool = SimpleNamespace(
        replicas={
            "a:1": _replica(True, "org/chat"),
            "b:1": _replica(False, "org/chat", "org/other"),
            "c:1": _replica(False, "org/other"),
        }
    )
    metrics = RouterMetrics()
    metrics.watch(pool)  # type: ignore[arg-type]
    text = generate_latest(metrics.registry).decode()
    assert 'tera_router_model_ready_replicas{model="org/chat"} 1.0' in text
    assert 'tera_router_model_ready_replicas{model="org/other"} 0.0' in text
