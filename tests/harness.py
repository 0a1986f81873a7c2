"""What the tests assert about the running service: the error contract's body, metrics, the
model's log records, cancellation on hang-up; and the tensors `tritonclient` sends to `llm`.
Servers are started by tools/processes.py."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

import yaml
from jsonschema import Draft202012Validator

from contracts.tensors import INPUTS
from tools import runtime

OPENAPI = yaml.safe_load((runtime.ROOT / "gateway" / "openapi.yaml").read_text())
# The one error body of every error answer (contracts/errors.py), from the OpenAPI
# document so the tests check what is published.
ERROR_SCHEMA = Draft202012Validator({"$ref": "#/components/schemas/Error",
                                     "components": OPENAPI["components"]})


def check_error_body(payload: Any, status: int, request_id: Optional[str] = None,
                     kind: Optional[str] = None) -> dict[str, Any]:
    """`payload` is the contract's error body for `status` (and `kind`), whose message ends
    with its request id (the one in `x-request-id` when given)."""
    problems = sorted(ERROR_SCHEMA.iter_errors(payload), key=str)
    assert not problems, f"{payload} is not the error contract: {problems[0].message}"
    assert payload["code"] == status, payload
    if kind is not None:
        assert payload["type"] == kind, payload
    if request_id is not None:
        assert payload["request_id"] == request_id, payload
    assert payload["error"].endswith(f" (request id {payload['request_id']})"), payload
    return payload


def assert_error_contract(reply: Any, status: int, kind: Optional[str] = None) -> dict[str, Any]:
    """A `requests` reply is the contract's JSON error, with the request id of its header."""
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    return check_error_body(reply.json(), status, reply.headers["x-request-id"], kind)


def metric(triton: runtime.Settings, name: str) -> float:
    """The sum over labels of one metric on Triton's metrics port."""
    import re

    import requests

    text = requests.get(f"http://{triton.host}:{triton.metrics_port}/metrics", timeout=5).text
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$", text,
                                            re.M))


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus endpoint, parsed as Prometheus parses it, keyed by its
    name and its sorted labels (`sample(...)` reads one)."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    reply = requests.get(url, timeout=10)
    assert reply.status_code == 200, reply.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(reply.text) for s in family.samples}


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    """One sample of a `scrape`, 0 when absent (a labelled counter appears at its first use)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for_metric(triton: runtime.Settings, name: str, value: float,
                    timeout: float = 10) -> None:
    """Metrics are updated off the engine thread, so they land milliseconds after the answer."""
    deadline = time.monotonic() + timeout
    while metric(triton, name) != value:
        assert time.monotonic() < deadline, f"{name} = {metric(triton, name)}, not {value}"
        time.sleep(0.1)


def wait_for_metric_above(triton: runtime.Settings, name: str, floor: float,
                          timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while metric(triton, name) <= floor:
        assert time.monotonic() < deadline, f"{name} = {metric(triton, name)}, not > {floor}"
        time.sleep(0.1)


def assert_disconnect_cancels(triton: runtime.Settings, triton_log: Path, url: str,
                              request: Callable[[str], tuple[dict[str, Any], dict[str, str]]],
                              attempts: int = 5) -> None:
    """Read the first event of a long SSE stream, hang up, and see the engine drop it: one
    more cancellation counted, nothing left running, its log line saying `cancelled`.

    `request(request_id)` gives the body and headers of a stream tagged with that id. The
    longest generation a request may ask for (256 tokens) takes ~50 ms here, about what a
    hang-up needs to reach the engine through the gateway and Triton, so a generation may end
    first; that attempt proves nothing either way (its log line says `length`) and another is
    made, each under its own id, up to `attempts`."""
    import requests

    base = f"hang-up-{time.time_ns()}"
    for attempt in range(attempts):
        request_id = f"{base}-{attempt}"
        body, headers = request(request_id)
        before = metric(triton, "llm:request_cancellations_total")
        with requests.post(url, json=body, headers=headers, stream=True, timeout=60) as reply:
            assert reply.status_code == 200, reply.text
            next(line for line in reply.iter_lines() if line.startswith(b"data:"))
        wait_for_metric(triton, "vllm:num_requests_running", 0)
        record = _model_log_record(triton_log, request_id)
        if record["finish_reason"] == "cancelled":
            assert record["completion_tokens"] < 256
            wait_for_metric(triton, "llm:request_cancellations_total", before + 1)
            return
        assert record["finish_reason"] == "length", record  # it ended before the hang-up
    raise AssertionError(f"no hang-up cancelled its generation in {attempts} attempts")


def _model_log_record(log: Path, request_id: str, timeout: float = 10) -> dict:
    """The model's log record of `request_id`, once written."""
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in model_log_records(log) if r["request_id"] == request_id]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no log record of {request_id}"
        time.sleep(0.05)


def model_log_records(log: Path, event: str = "llm_request") -> list[dict]:
    """The model's JSON log records; Triton wraps each message in a quoted string."""
    records = []
    for line in log.read_text(errors="replace").splitlines():
        if f'\\"event\\":\\"{event}\\"' in line:
            records.append(json.loads(json.loads(line[line.index("] ") + 2:])))
    return records


def infer_inputs(module: Any, prompt: Any, **params: Any) -> list[Any]:
    """tritonclient (http or grpc) inputs for `llm`, batch dimension included; `prompt` may
    be raw bytes (to send invalid UTF-8)."""
    import numpy as np
    from tritonclient.utils import np_to_triton_dtype

    arrays = {"text_input": np.array([[prompt if isinstance(prompt, bytes)
                                       else prompt.encode()]], dtype=object)}
    for name, value in params.items():
        if name == "stop":
            arrays[name] = np.array([[s.encode() for s in value]], dtype=object)
        else:
            arrays[name] = np.array([[value]], dtype=INPUTS[name].numpy_dtype)
    inputs = []
    for name, array in arrays.items():
        tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs
