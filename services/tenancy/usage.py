"""Usage per key and model: Prometheus counters (labelled by key name, never the key)
and the same totals as JSON for the admin endpoint."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from services.catalog.schema import KeyEntry


class UsageLedger:
    def __init__(self, registry: CollectorRegistry, *, service: str = "edge") -> None:
        self.requests = Counter(
            "tera_key_requests",
            "Requests per key and model",
            ["key", "model", "status"],
            registry=registry,
        )
        self.tokens = Counter(
            "tera_key_tokens",
            "Tokens per key and model",
            ["key", "model", "kind"],
            registry=registry,
        )
        self.limiter_failures = Counter(
            f"tera_{service}_limiter_failures",
            "Rate-limit store errors (requests were admitted)",
            registry=registry,
        )
        # Each key's configured limits, so dashboards can show usage against them.
        self.limits = Gauge(
            "tera_key_limit",
            "Configured per-key limit (requests_per_minute, tokens_per_minute, max_concurrent)",
            ["key", "limit"],
            registry=registry,
        )
        self._totals: dict[str, dict[str, dict[str, int]]] = defaultdict(
            lambda: defaultdict(
                lambda: {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "errors": 0}
            )
        )

    def publish_limits(self, keys: list[KeyEntry]) -> None:
        for entry in keys:
            for limit, value in entry.limits.model_dump().items():
                if value is not None:
                    self.limits.labels(entry.name, limit).set(value)

    def record(self, key: str, model: str, status: int | str, prompt: int, completion: int) -> None:
        self.requests.labels(key, model, str(status)).inc()
        self.tokens.labels(key, model, "prompt").inc(prompt)
        self.tokens.labels(key, model, "completion").inc(completion)
        totals = self._totals[key][model]
        totals["requests"] += 1
        totals["prompt_tokens"] += prompt
        totals["completion_tokens"] += completion
        # HTTP statuses at the edge, gRPC code names at the router.
        totals["errors"] += status != "OK" if isinstance(status, str) else status >= 400

    def snapshot(self) -> dict[str, Any]:
        return {"keys": {k: dict(models) for k, models in self._totals.items()}}
