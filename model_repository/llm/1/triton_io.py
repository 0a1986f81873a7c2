"""Triton-facing I/O for `llm`: read a request's tensors, build its response, log its metadata.

Why separate from `model.py`: this is the only module that knows tensor names and Triton's
error codes, so the mapping "ValidationError -> INVALID_ARG (HTTP 400)" lives in one place.
The per-request log line carries ids, sizes, timings and status, never prompt or completion
text.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Mapping, Optional

import numpy as np
import triton_python_backend_utils as pb_utils

from textgen.outputs import SequenceOutput
from textgen.validation import ValidationError

INPUT_NAMES = ("text_input", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop",
               "exclude_input_in_output", "ignore_eos")
OUTPUT_NAMES = ("text_output", "finish_reason", "num_input_tokens", "num_output_tokens")


def read_inputs(request: Any) -> dict[str, Optional[np.ndarray]]:
    """The request's tensors by name; optional inputs that were not sent are None."""
    inputs = {}
    for name in INPUT_NAMES:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        inputs[name] = None if tensor is None else tensor.as_numpy()
    return inputs


def request_metadata(request: Any) -> dict[str, str]:
    """Ids for logs: the request id and the caller identity the gateway forwarded."""
    try:
        params = json.loads(request.parameters() or "{}")
    except ValueError:
        params = {}
    return {
        "request_id": str(params.get("x-request-id") or request.request_id() or ""),
        "key_id": str(params.get("x-llm-key-id", "")),
        "tier": str(params.get("x-llm-tier", "")),
    }


def output_dtypes(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """Numpy dtypes of the outputs, read from the model config rather than hard-coded."""
    return {name: pb_utils.triton_string_to_numpy(
        pb_utils.get_output_config_by_name(model_config, name)["data_type"])
        for name in OUTPUT_NAMES}


def error_response(exc: Exception) -> Any:
    """Client mistakes become INVALID_ARG (HTTP 400); anything else stays a server error."""
    if isinstance(exc, ValidationError):
        return pb_utils.InferenceResponse(
            error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG))
    return pb_utils.InferenceResponse(
        error=pb_utils.TritonError(str(exc), pb_utils.TritonError.UNAVAILABLE))


def log_request(meta: Mapping[str, str], status: str,
                output: Optional[SequenceOutput] = None, error: str = "") -> None:
    record: dict[str, Any] = {"event": "llm_request", **meta, "status": status}
    if output is not None:
        record.update(
            prompt_tokens=output.prompt_tokens, completion_tokens=output.completion_tokens,
            finish_reason=output.finish_reason,
            queue_ms=round(output.queue_seconds * 1e3, 2),
            first_token_ms=round(output.first_token_seconds * 1e3, 2),
            total_ms=round(output.total_seconds * 1e3, 2))
    if error:
        record["error"] = error
    pb_utils.Logger.log_info(json.dumps(record, separators=(",", ":")))


class UnaryResponse:
    """An OutputSink that collects one sequence and turns it into one InferenceResponse."""

    def __init__(self, prompt: str, include_prompt: bool, dtypes: Mapping[str, Any],
                 meta: Mapping[str, str]) -> None:
        self._prefix = prompt if include_prompt else ""
        self._dtypes = dtypes
        self._meta = meta
        self._done = threading.Event()
        self._output: Optional[SequenceOutput] = None

    def on_text(self, delta: str) -> None:
        """Unary callers get the whole text at the end."""

    def on_finish(self, output: SequenceOutput) -> None:
        self._output = output
        self._done.set()

    def is_cancelled(self) -> bool:
        return False

    def wait(self) -> Any:
        self._done.wait()
        output = self._output
        if output is None or output.finish_reason == "error":
            message = output.error if output else "no output"
            log_request(self._meta, "error", output, message)
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(message, pb_utils.TritonError.UNAVAILABLE))
        log_request(self._meta, "ok", output)
        values = {
            "text_output": (self._prefix + output.text).encode("utf-8"),
            "finish_reason": output.finish_reason.encode(),
            "num_input_tokens": output.prompt_tokens,
            "num_output_tokens": output.completion_tokens,
        }
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(name, np.array([[value]], dtype=self._dtypes[name]))
            for name, value in values.items()])
