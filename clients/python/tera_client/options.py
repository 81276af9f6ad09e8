"""The channel settings Tera recommends, and retries declared in the service config.

Keepalive matches what Tera's servers permit (a ping every 10 s, even when idle), so a
dead peer is noticed on quiet connections too. Retries are gRPC's own retry policy:
a call is retried on UNAVAILABLE or RESOURCE_EXHAUSTED only until its first response
message arrives (afterwards it is committed), and Tera's refusals carry the trailing
metadata `grpc-retry-pushback-ms`, which gRPC waits for instead of its own backoff.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

SERVICE = "tera.v1.Engine"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC retry policy; max_attempts counts the first try (gRPC caps it at 5)."""

    max_attempts: int = 5
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    backoff_multiplier: float = 2.0
    retryable: tuple[str, ...] = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")

    def service_config(self) -> str:
        if self.max_attempts <= 1:
            return json.dumps({"methodConfig": [{"name": [{"service": SERVICE}]}]})
        policy = {
            "maxAttempts": self.max_attempts,
            "initialBackoff": f"{self.initial_backoff_s}s",
            "maxBackoff": f"{self.max_backoff_s}s",
            "backoffMultiplier": self.backoff_multiplier,
            "retryableStatusCodes": list(self.retryable),
        }
        return json.dumps(
            {"methodConfig": [{"name": [{"service": SERVICE}], "retryPolicy": policy}]}
        )


NO_RETRIES = RetryPolicy(max_attempts=1)


def channel_options(retry: RetryPolicy | None = None) -> list[tuple[str, int | str]]:
    retry = retry or RetryPolicy()
    return [
        *CHANNEL_OPTIONS,
        ("grpc.enable_retries", int(retry.max_attempts > 1)),
        ("grpc.service_config", retry.service_config()),
    ]
