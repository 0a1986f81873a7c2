"""The engine's spans of each request, children of Triton's, when tracing is on.

With OTEL_EXPORTER_OTLP_ENDPOINT set, the runner starts Triton with OpenTelemetry tracing
(tools/runtime.py): Triton continues the caller's `traceparent` (the gateway's, or the OpenAI
frontend's on its gRPC calls) with spans of its own and hands the model the context of its
span (`request.trace().get_context()`). The model carries it in the request's metadata, over
the engine link too, and when a sequence ends this module adds where its time went:

    llm.generate   arrival -> last token (event `first_token`)
      llm.queue    arrival -> a slot in the batch
      llm.prefill  the slot -> the first token
      llm.decode   the first token -> the last

The engine measures those moments itself (SequenceOutput); the spans are written once the
sequence ended, with those times, so nothing runs on the decode step. Attributes are ids,
counts and outcomes: never text.
"""

from __future__ import annotations

import json
import time
from typing import Any, Mapping, Optional

from opentelemetry import trace

from monitoring import otlp
from textgen.core.outputs import SequenceOutput

TRACEPARENT = "traceparent"  # the key in a request's metadata
_tracer: Optional[trace.Tracer] = None
_made = False


def _get_tracer() -> Optional[trace.Tracer]:
    global _tracer, _made
    if not _made:
        _tracer, _made = otlp.tracer("llm-engine"), True
    return _tracer


def request_traceparent(request: Any) -> str:
    """The `traceparent` of Triton's span of `request`; empty when Triton traces nothing."""
    if _get_tracer() is None:
        return ""
    try:
        context = request.trace().get_context()
        carrier = json.loads(context) if context else {}
    except Exception:  # no trace, or a server without the API: no spans, the request goes on
        return ""
    return str(carrier.get(TRACEPARENT, "")) if isinstance(carrier, dict) else ""


def record(meta: Mapping[str, str], output: SequenceOutput) -> None:
    """The spans of one sequence that just ended (see the module's docstring)."""
    tracer = _get_tracer()
    if tracer is None or not meta.get(TRACEPARENT):
        return
    end = time.time_ns()
    arrival = end - int(output.total_seconds * 1e9)
    admitted = arrival + int(output.queue_seconds * 1e9)
    first = arrival + int(output.first_token_seconds * 1e9)
    parent = otlp.context_from({TRACEPARENT: meta[TRACEPARENT]})
    span = tracer.start_span("llm.generate", context=parent, start_time=arrival, attributes={
        "llm.request_id": meta.get("request_id", ""), "llm.index": output.index,
        "llm.prompt_tokens": output.prompt_tokens,
        "llm.completion_tokens": output.completion_tokens,
        "llm.finish_reason": output.finish_reason.value})
    if output.completion_tokens:
        span.add_event("first_token", timestamp=first)
    inside = trace.set_span_in_context(span)
    for name, start, stop in (("llm.queue", arrival, admitted), ("llm.prefill", admitted, first),
                              ("llm.decode", first, end)):
        tracer.start_span(name, context=inside, start_time=start).end(end_time=stop)
    span.end(end_time=end)
