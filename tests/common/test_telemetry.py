"""What the engine gives vLLM for its own request span: vLLM reads only the traces
protocol variable and takes the endpoint as its exporter's whole URL."""

from __future__ import annotations

import os

import pytest

from services.common.telemetry import vllm_traces_endpoint

OTEL = (
    "OTEL_SDK_DISABLED",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
)


@pytest.fixture(autouse=True)
def no_otel(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL:
        # Set first, so the variable is restored (or removed) after the test even where
        # vllm_traces_endpoint, not the test, sets it: later tests' processes inherit it.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_tracing_off_leaves_vllms_off() -> None:
    assert vllm_traces_endpoint() is None
    assert "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" not in os.environ


def test_grpc_takes_the_endpoint_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317")
    assert vllm_traces_endpoint() == "http://jaeger:4317"
    assert os.environ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "grpc"


def test_http_gets_the_traces_path_the_sdk_would_append(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318/")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    assert vllm_traces_endpoint() == "http://jaeger:4318/v1/traces"
    assert os.environ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "http/protobuf"


def test_a_traces_endpoint_is_already_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    whole = "http://collector:4318/custom/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", whole)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    assert vllm_traces_endpoint() == whole


def test_sdk_disabled_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert vllm_traces_endpoint() is None
