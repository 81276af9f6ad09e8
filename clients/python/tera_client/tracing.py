"""Trace context for the call's metadata, when OpenTelemetry is installed."""

from __future__ import annotations

try:
    from opentelemetry import propagate
except ImportError:  # tracing is optional
    propagate = None  # type: ignore[assignment]


def trace_metadata() -> list[tuple[str, str]]:
    """W3C traceparent/tracestate (or the configured propagator's keys) of the current
    span; empty without OpenTelemetry or outside a span."""
    if propagate is None:
        return []
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [(k.lower(), v) for k, v in carrier.items()]
