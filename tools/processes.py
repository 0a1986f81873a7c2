"""Start real servers for the tests: free ports, readiness polling, log dumps, clean teardown."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import yaml
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import runtime  # noqa: E402

OPENAPI = yaml.safe_load((ROOT / "gateway" / "openapi.yaml").read_text())
# The one error body of every error answer (gateway/error_contract.py), from the OpenAPI
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


def env_file(path: Path) -> dict[str, str]:
    """The KEY=VALUE lines of a settings file (docker/gateway.env, deploy/k8s/gateway.env)."""
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if re.match(r"^[A-Z_]+=", line))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_ok(url: str, headers: Optional[dict[str, str]] = None) -> bool:
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


class ServerProcess(runtime.ManagedProcess):
    """One real server process for a test, with readiness polling and log dumps."""

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_until(self, ready: Callable[[], bool], timeout: float = 120.0) -> None:
        """Poll `ready`; fail fast with the log when the process dies, or on timeout."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.25)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)


def triton_settings(run_dir: Path, **env: str) -> runtime.Settings:
    """Settings on free loopback ports, writing everything under `run_dir`."""
    values = {"LLM_RUN_DIR": str(run_dir), "LLM_HTTP_PORT": str(free_port()),
              "LLM_GRPC_PORT": str(free_port()), "LLM_METRICS_PORT": str(free_port()),
              "LLM_OPENAI_PORT": str(free_port()), "LLM_LOG_LEVEL": "info", **env}
    return runtime.Settings.from_env(values)


def triton_process(settings: runtime.Settings, name: str = "tritonserver",
                   **env: str) -> ServerProcess:
    process_env = runtime.triton_env(settings.run_dir, {
        **os.environ, "LLM_MODEL_DIR": str(settings.model_dir), **env})
    return ServerProcess(name, runtime.triton_command(settings), process_env,
                         settings.run_dir / f"{name}.log")


def openai_process(settings: runtime.Settings, name: str = "openai") -> ServerProcess:
    """The OpenAI-compatible frontend as `make serve` runs it, in front of `settings`' Triton."""
    return ServerProcess(name, runtime.openai_command(settings), dict(os.environ),
                         settings.run_dir / f"{name}.log", cwd=ROOT)


def metric(triton: runtime.Settings, name: str) -> float:
    """The sum over labels of one metric on Triton's metrics port."""
    import re

    import requests

    text = requests.get(f"http://{triton.host}:{triton.metrics_port}/metrics", timeout=5).text
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$", text,
                                            re.M))


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


def gateway_process(settings: runtime.Settings, name: str = "envoy",
                    **env: str) -> tuple[ServerProcess, runtime.GatewaySettings]:
    """A real Envoy running the rendered gateway config in front of `settings`' Triton."""
    values = dict(os.environ)
    values.update(GATEWAY_PORT=str(free_port()), GATEWAY_ADMIN_PORT=str(free_port()),
                  LLM_KEYS_DIR=str(settings.run_dir / "keys"),
                  GATEWAY_ACCESS_LOG=str(settings.run_dir / name / "access.log"), **env)
    gateway = runtime.gateway_settings(settings, values)
    config = runtime.prepare_gateway(gateway, settings.run_dir / name)
    process = ServerProcess(name, runtime.envoy_command(config), dict(os.environ),
                            settings.run_dir / name / "envoy.log")
    return process, gateway


@dataclass
class RunnerStack:
    """The whole service as `make serve` runs it (tools/serve.py), on free ports."""

    runner: ServerProcess
    settings: runtime.Settings
    gateway: runtime.GatewaySettings
    key: str

    @property
    def url(self) -> str:
        return f"http://{self.gateway.host}:{self.gateway.port}"

    def triton_pid(self) -> int:
        """The tritonserver the runner supervises right now."""
        return runtime.find_process(b"tritonserver",
                                    f"--http-port={self.settings.http_port}".encode())


def runner_stack(run_dir: Path, **env: str) -> RunnerStack:
    """Start tools/serve.py with its own ports, run dir and a premium-tier key."""
    values = {**os.environ, "LLM_RUN_DIR": str(run_dir), "LLM_HTTP_PORT": str(free_port()),
              "LLM_GRPC_PORT": str(free_port()), "LLM_METRICS_PORT": str(free_port()),
              "LLM_OPENAI_PORT": str(free_port()),
              "GATEWAY_PORT": str(free_port()), "GATEWAY_ADMIN_PORT": str(free_port()),
              "LLM_KEYS_DIR": str(run_dir / "keys"), **env}
    values.pop("GATEWAY_ACCESS_LOG", None)
    settings = runtime.Settings.from_env(values)
    gateway = runtime.gateway_settings(settings, values)
    key, _ = runtime.KeyStore(gateway.keys_dir).issue("reliability", "premium")
    runtime.KeyStore(gateway.keys_dir).issue("dev", "standard")  # so the runner prints none
    runner = ServerProcess("runner", [sys.executable, str(ROOT / "tools" / "serve.py"), "serve"],
                           values, run_dir / "runner.log")
    runner.start()
    stack = RunnerStack(runner, settings, gateway, key)
    runner.wait_until(lambda: http_ok(f"{stack.url}/readyz"), timeout=120)
    return stack


_INPUT_DTYPES = {"max_tokens": "int32", "temperature": "float32", "top_p": "float32",
                 "top_k": "int32", "seed": "uint64", "exclude_input_in_output": "bool",
                 "ignore_eos": "bool"}


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
            arrays[name] = np.array([[value]], dtype=_INPUT_DTYPES[name])
    inputs = []
    for name, array in arrays.items():
        tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs
