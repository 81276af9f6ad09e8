"""OpenTelemetry set-up shared by the services, configured by the standard OTEL_* variables.

Tracing is on when an OTLP endpoint is configured (OTEL_EXPORTER_OTLP_ENDPOINT or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) and OTEL_SDK_DISABLED is not "true". Otherwise no
SDK is installed, no interceptor or middleware is added, and the API's no-op tracer
answers every call: tracing off costs nothing measurable.

OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER(_ARG),
OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL ("grpc" or "http/protobuf") and OTEL_BSP_* are
read by the SDK as usual. Jaeger ingests OTLP natively.
"""

from __future__ import annotations

import logging
import os
from contextvars import ContextVar
from typing import Any

from opentelemetry import propagate, trace

from services.common.mux import GENERATE_MUX

log = logging.getLogger("tera.telemetry")

# Semantic-convention attribute names (GenAI) and Tera's own.
GEN_AI_SYSTEM = "gen_ai.system"
GEN_AI_OPERATION = "gen_ai.operation.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P = "gen_ai.request.top_p"
GEN_AI_USAGE_INPUT = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT = "gen_ai.usage.output_tokens"
GEN_AI_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
TTFT = "tera.time_to_first_token_s"
QUEUE_TIME = "tera.queue_time_s"
PRIORITY = "tera.priority"  # the request's class (router queue, engine scheduler)
REPLICA = "tera.replica.address"
ATTEMPT = "tera.attempt"
RETRY_REASON = "tera.retry.reason"
HEDGE = "tera.attempt.hedge"
# On a resumed attempt: the generated tokens it was given to continue from.
RESUMED_TOKENS = "tera.resume.tokens"
# What OpenTelemetry's gRPC instrumentation puts on a call's span (RPC conventions).
RPC_SYSTEM = "rpc.system"
RPC_SERVICE = "rpc.service"
RPC_METHOD = "rpc.method"
RPC_GRPC_STATUS_CODE = "rpc.grpc.status_code"


def tracing_enabled() -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def setup_tracing(default_service_name: str) -> Any | None:
    """Installs the SDK with an OTLP exporter; returns the provider, or None when off."""
    if not tracing_enabled():
        return None
    name = os.environ.get("OTEL_SERVICE_NAME") or default_service_name
    provider = _sdk_provider(name)
    trace.set_tracer_provider(provider)
    log.info("tracing on: service %s exports OTLP to %s", name, _endpoint())
    return provider


def _sdk_provider(service_name: str) -> Any:
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    provider.add_span_processor(BatchSpanProcessor(_exporter()))
    return provider


# Which service the running code is, in a process that is two (services/gateway): set
# once at the top of a half's task, inherited by every task and callback it starts.
_SERVICE: ContextVar[str | None] = ContextVar("tera_service", default=None)


def serve_as(service: str) -> None:
    """Spans started from here on, in this task and those it starts, are `service`'s."""
    _SERVICE.set(service)


class _ByService(trace.TracerProvider):
    """One process's spans under the names its parts would have as processes of their
    own, each span its part's by the task or callback starting it (`serve_as`), so a
    trace reads the same whichever way the parts are deployed."""

    def __init__(self, providers: dict[str, Any], default: str) -> None:
        self._providers = providers
        self._default = default

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        tracers = {name: p.get_tracer(*args, **kwargs) for name, p in self._providers.items()}
        return _ServiceTracer(tracers, self._default)

    def shutdown(self) -> None:
        for provider in self._providers.values():
            provider.shutdown()


class _ServiceTracer(trace.Tracer):
    def __init__(self, tracers: dict[str, trace.Tracer], default: str) -> None:
        self._tracers = tracers
        self._default = default

    def _current(self) -> trace.Tracer:
        return self._tracers[_SERVICE.get() or self._default]

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return self._current().start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        return self._current().start_as_current_span(*args, **kwargs)


def setup_tracing_as(services: list[str]) -> Any | None:
    """`setup_tracing` for one process that is several services: a span is named for the
    service `serve_as` set where it started, the first one's where none was set.
    OTEL_SERVICE_NAME, if set, names them all as one."""
    if not tracing_enabled() or os.environ.get("OTEL_SERVICE_NAME"):
        return setup_tracing(services[0])
    providers = {name: _sdk_provider(name) for name in services}
    trace.set_tracer_provider(_ByService(providers, default=services[0]))
    log.info("tracing on: services %s export OTLP to %s", ", ".join(services), _endpoint())
    return trace.get_tracer_provider()


def shutdown_tracing(provider: Any | None) -> None:
    """Flushes what is buffered, so the last spans are not lost at exit."""
    if provider is not None:
        provider.shutdown()


def _endpoint() -> str:
    return os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT", ""
    )


def _protocol() -> str:
    return (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    )


def vllm_traces_endpoint() -> str | None:
    """The OTLP endpoint to give vLLM (its otlp_traces_endpoint) when tracing is on, so
    each request gets vLLM's own span (queue, prefill and decode times) under the
    engine's; None when off. The span goes through this process's provider (vLLM makes
    it with the global tracer); vLLM's own exporter only carries its processes' start-up
    spans. vLLM reads only the traces protocol variable and uses the endpoint as the
    exporter's whole URL, so both are spelled out for it (its processes inherit them)."""
    if not tracing_enabled():
        return None
    protocol = _protocol()
    os.environ.setdefault("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", protocol)
    if protocol == "grpc" or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return _endpoint()
    return _endpoint().rstrip("/") + "/v1/traces"  # what the SDK appends to the base


def _exporter() -> Any:
    if _protocol() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter()


def grpc_server_interceptors() -> list[Any]:
    if not tracing_enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

    # Probes are not part of any request's trace (and the interceptor cannot wrap the
    # health service's Watch, which writes through the context). A multiplexed call
    # carries many requests: each stream has its own span (services/common/mux_server.py).
    skip = filters.any_of(
        filters.service_prefix("grpc.health"),
        filters.service_prefix("grpc.reflection"),
        filters.full_method_name(GENERATE_MUX),
    )
    return [aio_server_interceptor(filter_=filters.negate(skip))]


def grpc_client_interceptors() -> list[Any] | None:
    if not tracing_enabled():
        return None
    from opentelemetry.instrumentation.grpc import aio_client_interceptors, filters

    skip = filters.any_of(
        filters.service_prefix("grpc.health"), filters.full_method_name(GENERATE_MUX)
    )
    return list(aio_client_interceptors(filter_=filters.negate(skip)))


def instrument_aiohttp_server(provider: Any) -> None:
    """Traces every aiohttp request (call before the Application is created)."""
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor

    AioHttpServerInstrumentor().instrument(tracer_provider=provider)


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def start_client_span(method: str) -> trace.Span:
    """A gRPC call's client span, as the client interceptor opens it for a plain call
    (name, kind, rpc.* attributes), for a stream it does not see: one on a multiplexed
    call. Not current: the caller makes it so while injecting, and ends it."""
    service, name = method.lstrip("/").split("/", 1)
    attributes = {
        RPC_SYSTEM: "grpc",
        RPC_SERVICE: service,
        RPC_METHOD: name,
        RPC_GRPC_STATUS_CODE: 0,
    }
    tracer = trace.get_tracer("tera.mux")
    return tracer.start_span(method, kind=trace.SpanKind.CLIENT, attributes=attributes)


def inject_headers() -> dict[str, str]:
    """The current context as W3C headers (for vLLM's trace_headers)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier
