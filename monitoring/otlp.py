"""OpenTelemetry traces of this project's own processes, exported over OTLP/HTTP as JSON.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` is set (e.g. `http://127.0.0.1:4318`, the standard
variable: the same endpoint Envoy and Triton export to). The OpenAI frontend and the engine
make their spans with OpenTelemetry's SDK and hand them to `OtlpJsonExporter`.

Why our own exporter: the official OTLP exporters encode protobuf with opentelemetry-proto,
which needs protobuf 5 or later, and tritonclient 2.51 (the clients matching the server) needs
protobuf 4. OTLP/HTTP's JSON encoding needs no protobuf, so spans go out as JSON; every OTLP
collector accepts it.

Spans carry ids, sizes, timings and outcomes: never prompt or completion text.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from typing import Any, Mapping, Optional, Sequence

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
PROPAGATOR = TraceContextTextMapPropagator()  # W3C `traceparent`
LOG = logging.getLogger("monitoring.otlp")


def _value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    return {"stringValue": str(value)}


def _attributes(attributes: Optional[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"key": key, "value": _value(value)} for key, value in (attributes or {}).items()]


def encode(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """An ExportTraceServiceRequest in OTLP's JSON encoding (ids as hex)."""
    by_resource: dict[int, tuple[Resource, list[dict[str, Any]]]] = {}
    for span in spans:
        context = span.get_span_context()
        encoded: dict[str, Any] = {
            "traceId": format(context.trace_id, "032x"),
            "spanId": format(context.span_id, "016x"),
            "name": span.name,
            "kind": span.kind.value + 1,  # OTLP counts from UNSPECIFIED = 0
            "startTimeUnixNano": str(span.start_time),
            "endTimeUnixNano": str(span.end_time),
            "attributes": _attributes(span.attributes),
            "events": [{"timeUnixNano": str(e.timestamp), "name": e.name,
                        "attributes": _attributes(e.attributes)} for e in span.events],
            "status": {"code": span.status.status_code.value},
        }
        if span.parent is not None:
            encoded["parentSpanId"] = format(span.parent.span_id, "016x")
        resource = span.resource
        by_resource.setdefault(id(resource), (resource, []))[1].append(encoded)
    return {"resourceSpans": [
        {"resource": {"attributes": _attributes(resource.attributes)},
         "scopeSpans": [{"scope": {"name": "llm-service"}, "spans": encoded}]}
        for resource, encoded in by_resource.values()]}


class OtlpJsonExporter(SpanExporter):
    """POSTs batches of spans to `<endpoint>/v1/traces` as OTLP/JSON."""

    def __init__(self, endpoint: str, timeout_s: float = 5.0) -> None:
        self.url = endpoint.rstrip("/") + "/v1/traces"
        self.timeout_s = timeout_s

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        request = urllib.request.Request(self.url, data=json.dumps(encode(spans)).encode(),
                                         headers={"content-type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=self.timeout_s).close()
        except OSError as exc:  # a collector that is away loses spans, never requests
            LOG.warning("exporting %d spans to %s failed: %s", len(spans), self.url, exc)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def tracer(service: str, env: Optional[Mapping[str, str]] = None) -> Optional[trace.Tracer]:
    """A tracer exporting to OTEL_EXPORTER_OTLP_ENDPOINT as `service`, or None when it is not
    set (tracing off: callers skip their spans altogether). Spans are batched and sent from
    a thread of the SDK's, at most a second after they end."""
    endpoint = (os.environ if env is None else env).get(ENDPOINT_ENV, "")
    if not endpoint:
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OtlpJsonExporter(endpoint),
                                                   schedule_delay_millis=1000))
    return provider.get_tracer("llm-service")


def context_from(carrier: Mapping[str, str]) -> Any:
    """The trace context a `traceparent` in `carrier` (headers, parameters) names."""
    return PROPAGATOR.extract(carrier=dict(carrier))


def traceparent_of(span: trace.Span) -> str:
    """The `traceparent` that makes a callee's spans children of `span`."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent", "")
