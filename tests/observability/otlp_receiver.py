"""An OTLP trace receiver for tests: the gRPC TraceService that Jaeger also implements."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from devstack.processes import free_port


@dataclass
class ReceivedSpan:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, object]
    events: list[str]
    status_code: int
    start_ns: int = 0
    end_ns: int = 0
    event_ns: dict[str, int] = field(default_factory=dict)  # first time of each event


def _value(v: AnyValue) -> object:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def _first_times(events: Iterable[Span.Event]) -> dict[str, int]:
    times: dict[str, int] = {}
    for e in events:
        times.setdefault(e.name, e.time_unix_nano)
    return times


@dataclass
class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    port: int = field(default_factory=free_port)
    spans: list[ReceivedSpan] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def Export(self, request, context):  # type: ignore[no-untyped-def]
        with self._lock:
            for resource_spans in request.resource_spans:
                attrs = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                service = str(attrs.get("service.name", ""))
                for scope in resource_spans.scope_spans:
                    for s in scope.spans:
                        self.spans.append(
                            ReceivedSpan(
                                service=service,
                                name=s.name,
                                kind=s.kind,
                                trace_id=s.trace_id.hex(),
                                span_id=s.span_id.hex(),
                                parent_id=s.parent_span_id.hex(),
                                attributes={a.key: _value(a.value) for a in s.attributes},
                                events=[e.name for e in s.events],
                                status_code=s.status.code,
                                start_ns=s.start_time_unix_nano,
                                end_ns=s.end_time_unix_nano,
                                event_ns=_first_times(s.events),
                            )
                        )
        return trace_service_pb2.ExportTraceServiceResponse()

    def __enter__(self) -> OtlpReceiver:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None)

    @property
    def env(self) -> dict[str, str]:
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def wait_for(
        self, trace_id: str, services: set[str], timeout_s: float = 15
    ) -> list[ReceivedSpan]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            spans = self.trace(trace_id)
            if services <= {s.service for s in spans}:
                time.sleep(0.5)  # let late spans of the same trace arrive
                return self.trace(trace_id)
            time.sleep(0.1)
        raise AssertionError(
            f"trace {trace_id}: got {[(s.service, s.name) for s in self.trace(trace_id)]}"
        )


def tree(spans: list[ReceivedSpan]) -> str:
    """The span tree as indented text (for failure messages and the closing note)."""
    by_parent: dict[str, list[ReceivedSpan]] = {}
    for s in spans:
        by_parent.setdefault(s.parent_id, []).append(s)
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_id not in ids]
    lines: list[str] = []

    def walk(span: ReceivedSpan, depth: int) -> None:
        keys = sorted(k for k in span.attributes if k.startswith(("gen_ai.", "tera.")))
        attrs = ", ".join(f"{k}={span.attributes[k]}" for k in keys)
        lines.append(f"{'  ' * depth}{span.service}: {span.name} [{attrs}]")
        for child in sorted(by_parent.get(span.span_id, []), key=lambda c: c.name):
            walk(child, depth + 1)

    for root in roots:
        walk(root, 0)
    return "\n".join(lines)
