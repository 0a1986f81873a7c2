"""A local OTLP/HTTP trace receiver for the tests: `python tests/otlp_receiver.py PORT OUT`.

It accepts `POST /v1/traces` in both OTLP encodings (protobuf, as Envoy and Triton send, and
JSON, as this project's exporter sends) and appends every span to OUT as one JSON line:
service, name, trace and span ids (hex), parent span id, times and attributes. Run with
.venv-vllm's Python: decoding OTLP protobuf needs opentelemetry-proto, whose protobuf 5+
cannot share the main environment with tritonclient's protobuf 4.
"""

from __future__ import annotations

import base64
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


def _hex(value: str) -> str:
    """Ids: hex in OTLP/JSON, base64 in protobuf's JSON mapping."""
    if not value:
        return ""
    try:
        int(value, 16)
        return value.lower()
    except ValueError:
        return base64.b64decode(value).hex()


def _value(value: dict[str, Any]) -> Any:
    return next(iter(value.values()), None) if value else None


def spans(body: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for resource in body.get("resourceSpans", []):
        attrs = {a["key"]: _value(a["value"]) for a in resource.get("resource", {})
                 .get("attributes", [])}
        for scope in resource.get("scopeSpans", []):
            for span in scope.get("spans", []):
                found.append({
                    "service": attrs.get("service.name", ""), "name": span["name"],
                    "trace_id": _hex(span.get("traceId", "")),
                    "span_id": _hex(span.get("spanId", "")),
                    "parent_span_id": _hex(span.get("parentSpanId", "")),
                    "start": int(span.get("startTimeUnixNano", 0)),
                    "end": int(span.get("endTimeUnixNano", 0)),
                    "attributes": {a["key"]: _value(a["value"])
                                   for a in span.get("attributes", [])},
                    "events": [e["name"] for e in span.get("events", [])]})
    return found


class Receiver(BaseHTTPRequestHandler):
    out = ""

    def _body(self) -> bytes:
        """The request body, sent with a length or chunked (as Envoy sends it)."""
        if "chunked" not in (self.headers.get("transfer-encoding") or ""):
            return self.rfile.read(int(self.headers.get("content-length") or 0))
        data = b""
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            data += self.rfile.read(size)
            self.rfile.readline()  # the CRLF after each chunk
        self.rfile.readline()  # the CRLF after the last, empty chunk
        return data

    def do_POST(self) -> None:  # noqa: N802 (the handler's API)
        data = self._body()
        if self.path != "/v1/traces":
            self.send_response(404)
            self.end_headers()
            return
        if "json" in (self.headers.get("content-type") or ""):
            body = json.loads(data)
        else:
            message = trace_service_pb2.ExportTraceServiceRequest()
            message.ParseFromString(data)
            body = json_format.MessageToDict(message)
        with open(self.out, "a") as handle:
            for span in spans(body):
                handle.write(json.dumps(span) + "\n")
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", self.headers.get("content-type") or
                         "application/x-protobuf")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        pass


def main() -> None:
    port, out = int(sys.argv[1]), sys.argv[2]
    Receiver.out = out
    ThreadingHTTPServer(("127.0.0.1", port), Receiver).serve_forever()


if __name__ == "__main__":
    main()
