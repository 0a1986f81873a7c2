"""Triton-facing I/O shared by `llm` and `llm_stream`: tensors in and out, errors, the log line.

Why one module: it is the only place that knows tensor names and Triton's error codes, so the
mapping "client mistake -> INVALID_ARG (HTTP 400), overload -> UNAVAILABLE (HTTP 503)" lives
here once. The per-request log line carries ids, sizes, timings and status, never prompt or
completion text.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import triton_python_backend_utils as pb_utils

from contracts import logprobs as logprobs_wire
from contracts.errors import ErrorType, wire_message
from contracts.headers import BASE_MODEL_TOKEN, Header
from contracts.logprobs import TokenLogprobs
from contracts.tensors import INPUTS, OUTPUTS, TIMINGS
from textgen.core.outputs import FinishReason, OutputSink, SequenceOutput
from textgen.core.validation import ModelAccessDenied, UnknownAdapter, ValidationError

from . import tracing

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL

# Error kinds -> Triton codes, for gRPC callers (the gateway sets HTTP statuses from the kind).
# Names, not values: pb_utils.TritonError only exists once the stub has started.
# Triton has no permission code: a refusal is INVALID_ARG there, the gateway's PERMISSION_DENIED.
_CODES = {ErrorType.INVALID_REQUEST: "INVALID_ARG", ErrorType.NOT_FOUND: "NOT_FOUND",
          ErrorType.FORBIDDEN: "INVALID_ARG",
          ErrorType.OVERLOADED: "UNAVAILABLE", ErrorType.UNAVAILABLE: "UNAVAILABLE",
          ErrorType.INTERNAL: "INTERNAL"}


def refusal_kind(exc: Exception) -> ErrorType:
    """A request refused before it ran: an adapter not served here, another client mistake,
    or no capacity for it now."""
    if isinstance(exc, UnknownAdapter):
        return ErrorType.NOT_FOUND
    if isinstance(exc, ModelAccessDenied):
        return ErrorType.FORBIDDEN
    return ErrorType.INVALID_REQUEST if isinstance(exc, ValidationError) else ErrorType.OVERLOADED


def read_inputs(request: Any) -> dict[str, Optional[np.ndarray]]:
    """The request's tensors by name; optional inputs that were not sent are None. The
    `x-llm-adapter` header (a request parameter, Triton's header forwarding) stands for the
    `adapter` input when that is absent; naming two different adapters is a 400. A key the
    gateway limited to some models (`x-llm-models`, contracts.headers) may use no other: 403
    (the gateway refused what it could read; this covers binary and gRPC bodies)."""
    inputs = {}
    for name in INPUTS:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        inputs[name] = None if tensor is None else tensor.as_numpy()
    params = _parameters(request)
    given = inputs["adapter"]
    named = "" if given is None else bytes(np.asarray(given).reshape(-1)[0]).decode(
        "utf-8", "replace").strip()
    header = str(params.get(Header.ADAPTER, "")).strip()
    if header:
        if named and named != header:
            raise ValidationError("adapter", f"{named!r:.80} and the x-llm-adapter header "
                                             f"{header!r:.80} name different adapters")
        named = header
        inputs["adapter"] = np.array([header.encode("utf-8")], dtype=object)
    allowed = [m for m in str(params.get(Header.MODELS, "")).split(",") if m]
    if allowed and (named or BASE_MODEL_TOKEN) not in allowed:
        raise ModelAccessDenied(named or "the base model", ", ".join(
            "the base model" if m == BASE_MODEL_TOKEN else m for m in allowed))
    return inputs


def _parameters(request: Any) -> dict[str, Any]:
    try:
        params = json.loads(request.parameters() or "{}")
    except ValueError:
        return {}
    return params if isinstance(params, dict) else {}


def request_metadata(request: Any) -> dict[str, str]:
    """Ids for logs: the request id and the caller identity the gateway forwarded, and the
    trace context of Triton's span when tracing is on (tracing.py)."""
    params = _parameters(request)
    meta = {
        "request_id": str(params.get(Header.REQUEST_ID) or request.request_id() or ""),
        "key_id": str(params.get(Header.KEY_ID, "")),
        "tier": str(params.get(Header.TIER, "")),
    }
    traceparent = tracing.request_traceparent(request)
    if traceparent:  # the log line carries it too: it joins the log to the trace
        meta[tracing.TRACEPARENT] = traceparent
    return meta


def output_dtypes(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """Numpy dtypes of the outputs, read from the model config rather than hard-coded."""
    return {name: pb_utils.triton_string_to_numpy(
        pb_utils.get_output_config_by_name(model_config, name)["data_type"])
        for name in OUTPUTS}


def error_response(kind: ErrorType, message: str) -> Any:
    code = getattr(pb_utils.TritonError, _CODES[kind])
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(wire_message(kind, message),
                                                                 code))


def output_error(output: SequenceOutput) -> Optional[tuple[ErrorType, str]]:
    """(kind, message) when a sequence ended without a usable result."""
    if output.finish_reason is FinishReason.REJECTED:
        return ErrorType.OVERLOADED, output.error
    if output.finish_reason is FinishReason.ERROR:
        return ErrorType.INTERNAL, output.error
    return None


def tensors(values: Mapping[str, Any], dtypes: Mapping[str, Any]) -> list[Any]:
    """Output tensors ([1, 1] each) for the named values."""
    return [pb_utils.Tensor(name, np.array([[value]], dtype=dtypes[name]))
            for name, value in values.items()]


def final_values(output: SequenceOutput, text: str, streamed: bool = False,
                 indexed: bool = False) -> dict[str, Any]:
    """A sequence's last response's outputs; a stream's carries no text and no token
    logprobs (its pieces had them). `indexed`: the request has n > 1 sequences."""
    values = {"text_output": text.encode("utf-8"),
              "finish_reason": output.finish_reason.value.encode(),
              "num_input_tokens": output.prompt_tokens,
              "num_output_tokens": output.completion_tokens,
              **dict(zip(TIMINGS, timings_ms(output)))}
    if indexed:
        values["index"] = output.index
    if output.logprobs is not None:
        values.update(logprobs_values(() if streamed else output.logprobs))
    if output.prompt_logprobs is not None:
        values["prompt_token_logprobs"] = logprobs_wire.dumps(output.prompt_logprobs).encode()
    return values


def timings_ms(output: SequenceOutput) -> tuple[float, float, float]:
    """(queue, prefill, decode) in milliseconds, as TIMINGS names them; they add up to the
    sequence's whole time."""
    return (round(output.queue_seconds * 1e3, 2),
            round((output.first_token_seconds - output.queue_seconds) * 1e3, 2),
            round((output.total_seconds - output.first_token_seconds) * 1e3, 2))


def logprobs_values(logprobs: Sequence[TokenLogprobs]) -> dict[str, Any]:
    """The `token_logprobs` output of a response that carries these tokens."""
    return {"token_logprobs": logprobs_wire.dumps(logprobs).encode()}


def log_request(meta: Mapping[str, str], status: str,
                output: Optional[SequenceOutput] = None, error: str = "",
                event: str = "llm_request") -> None:
    record: dict[str, Any] = {"event": event, **meta, "status": status}
    if output is not None:
        record.update(
            prompt_tokens=output.prompt_tokens, completion_tokens=output.completion_tokens,
            finish_reason=output.finish_reason.value,
            queue_ms=round(output.queue_seconds * 1e3, 2),
            first_token_ms=round(output.first_token_seconds * 1e3, 2),
            total_ms=round(output.total_seconds * 1e3, 2))
    if error:
        record["error"] = error
    pb_utils.Logger.log_info(json.dumps(record, separators=(",", ":")))


class TritonLogHandler(logging.Handler):
    """Python logging into Triton's log: the engine's load-time facts (threads and why, the
    token budget and the cache's bound, the forward kernel's build, why a path is not taken)
    are logged with `logging` by textgen, which knows nothing of Triton."""

    def emit(self, record: logging.LogRecord) -> None:
        message = f"{record.name}: {self.format(record)}"
        if record.levelno >= logging.ERROR:
            pb_utils.Logger.log_error(message)
        elif record.levelno >= logging.WARNING:
            pb_utils.Logger.log_warn(message)
        else:
            pb_utils.Logger.log_info(message)


def forward_engine_logs() -> None:
    """textgen's INFO and above go to Triton's log (once per process)."""
    engine_log = logging.getLogger("textgen")
    if not any(isinstance(h, TritonLogHandler) for h in engine_log.handlers):
        engine_log.addHandler(TritonLogHandler())
        engine_log.setLevel(logging.INFO)


class Logged:
    """Wraps an OutputSink to write the request's log line when it ends: when the last of
    its `choices` sequences ends, with their generated tokens added up."""

    def __init__(self, sink: OutputSink, meta: Mapping[str, str], streamed: bool,
                 choices: int = 1) -> None:
        self._sink = sink
        self._meta = {**meta, "mode": "stream" if streamed else "unary"}
        if choices > 1:
            self._meta["n"] = str(choices)
        self._open = choices
        self._generated = 0
        self._failure: Optional[tuple[ErrorType, str]] = None

    def on_text(self, delta: str, logprobs: Sequence[TokenLogprobs] = (),
                index: int = 0) -> None:
        self._sink.on_text(delta, logprobs, index)

    def on_finish(self, output: SequenceOutput) -> None:
        tracing.record(self._meta, output)
        self._open -= 1
        self._generated += output.completion_tokens
        self._failure = self._failure or output_error(output)
        if not self._open:
            failure = self._failure
            log_request(self._meta, failure[0].value if failure else "ok",
                        replace(output, completion_tokens=self._generated),
                        failure[1] if failure else "")
        self._sink.on_finish(output)

    def is_cancelled(self) -> bool:
        return self._sink.is_cancelled()


class UnaryResponder:
    """An OutputSink that answers one request with one final response when it ends."""

    # Asking Triton whether the client left is a round trip to the server process; once per
    # this many seconds per request keeps it off the decode step's critical path.
    CANCEL_POLL_SECONDS = 0.05

    def __init__(self, request: Any, prompt_prefix: str, dtypes: Mapping[str, Any]) -> None:
        self._sender = request.get_response_sender()
        self._request = request
        self._prefix = prompt_prefix
        self._dtypes = dtypes
        self._next_poll = 0.0
        self._cancelled = False

    def on_text(self, delta: str, logprobs: Sequence[TokenLogprobs] = (),
                index: int = 0) -> None:
        """Unary callers get the whole text (and logprobs) at the end."""

    def on_finish(self, output: SequenceOutput) -> None:
        failure = output_error(output)
        if failure:
            self._sender.send(error_response(*failure), flags=FINAL)
            return
        response = pb_utils.InferenceResponse(
            output_tensors=tensors(final_values(output, self._prefix + output.text),
                                   self._dtypes))
        self._sender.send(response, flags=FINAL)

    def is_cancelled(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now >= self._next_poll:
            self._next_poll = now + self.CANCEL_POLL_SECONDS
            self._cancelled = self._request.is_cancelled()
        return self._cancelled
