"""Traces across every hop: the gateway (Envoy), the OpenAI frontend, Triton and the engine,
each exporting OTLP to a local receiver (tests/otlp_receiver.py), joined by the W3C
`traceparent` that each hop passes on. The whole service runs as `make serve` runs it, with
OTEL_EXPORTER_OTLP_ENDPOINT set."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests

from tools import runtime
from tools.processes import ROOT, RunnerStack, ServerProcess, free_port, runner_stack

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PROMPT = "Quartz heron lantern"  # must appear in no span


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    python = runtime.VLLM_VENV / "bin" / "python"
    assert python.exists(), "the OTLP receiver decodes protobuf in .venv-vllm: `make vllm`"
    folder = tmp_path_factory.mktemp("otlp")
    port, spans = free_port(), folder / "spans.jsonl"
    process = ServerProcess("otlp", [str(python), str(ROOT / "tests" / "otlp_receiver.py"),
                                     str(port), str(spans)], {}, folder / "receiver.log")
    process.start()
    try:
        process.wait_until(lambda: _listening(port), timeout=30)
        yield f"http://127.0.0.1:{port}", spans
    finally:
        process.stop(grace=5)


def _listening(port: int) -> bool:
    try:
        requests.get(f"http://127.0.0.1:{port}/", timeout=1)
        return True
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def stack(receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunnerStack]:
    endpoint, _ = receiver
    stack = runner_stack(tmp_path_factory.mktemp("traced"), OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
                         LLM_DTYPE="float32")
    try:
        # Ready once the gateway found a healthy OpenAI frontend too (the runner's banner).
        stack.runner.wait_until(lambda: "the model is ready" in stack.runner.log.read_text(),
                                timeout=120)
        yield stack
    finally:
        stack.runner.stop(grace=60)


def spans_of(spans: Path, trace_id: str, until: Callable[[list[dict[str, Any]]], bool],
             timeout: float = 20) -> list[dict[str, Any]]:
    """The trace's spans once `until` holds (each exporter batches for about a second)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [json.loads(line) for line in spans.read_text().splitlines()] \
            if spans.exists() else []
        found = [s for s in found if s["trace_id"] == trace_id]
        if until(found):
            return found
        assert time.monotonic() < deadline, [(s["service"], s["name"]) for s in found]
        time.sleep(0.5)


def chain(found: list[dict[str, Any]], service: str, name: str) -> dict[str, Any]:
    matches = [s for s in found if s["service"] == service and s["name"] == name]
    assert len(matches) == 1, (service, name, [(s["service"], s["name"]) for s in found])
    return matches[0]


def parent(found: list[dict[str, Any]], span: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in found if s["span_id"] == span["parent_span_id"])


def every_hop(found: list[dict[str, Any]]) -> bool:
    """Each exporter's spans arrived (each batches on its own clock: Triton's every 5 s)."""
    names = {(s["service"], s["name"]) for s in found}
    return {("llm-engine", n) for n in ("llm.generate", "llm.queue", "llm.prefill",
                                         "llm.decode")} | {("triton", "InferRequest")} <= names \
        and any(s["service"] == "llm-gateway" for s in found)


def test_an_openai_request_is_one_trace_through_gateway_frontend_triton_and_engine(
        stack, receiver):
    _, spans = receiver
    client_span = "00f067aa0ba902b7"
    reply = requests.post(stack.url + "/v1/completions", timeout=60, headers={
        "Authorization": f"Bearer {stack.key}",
        "traceparent": f"00-{CLIENT_TRACE}-{client_span}-01"},
        json={"model": "demo_model", "prompt": PROMPT, "max_tokens": 8, "stream": True,
              "ignore_eos": True})
    assert reply.status_code == 200, reply.text
    found = spans_of(spans, CLIENT_TRACE, every_hop)
    gateway = next(s for s in found if s["service"] == "llm-gateway")
    assert gateway["parent_span_id"] == client_span
    frontend = chain(found, "llm-openai-frontend", "POST /v1/completions")
    assert parent(found, frontend)["service"] == "llm-gateway"
    triton = chain(found, "triton", "InferRequest")
    assert triton["parent_span_id"] == frontend["span_id"]
    generate = chain(found, "llm-engine", "llm.generate")
    # The engine's span hangs under Triton's spans of this request.
    ancestors, span = [], generate
    while span["parent_span_id"] in {s["span_id"] for s in found}:
        span = parent(found, span)
        ancestors.append((span["service"], span["name"]))
    assert ("triton", "InferRequest") in ancestors and ancestors[-1][0] == "llm-gateway"
    for name in ("llm.queue", "llm.prefill", "llm.decode"):
        part = chain(found, "llm-engine", name)
        assert part["parent_span_id"] == generate["span_id"]
        assert generate["start"] <= part["start"] <= part["end"] <= generate["end"]
    assert "first_token" in generate["events"]
    assert generate["attributes"]["llm.completion_tokens"] in ("8", 8)
    assert PROMPT not in spans.read_text()


def test_a_generate_request_reaches_the_engine_through_tritons_http_trace(stack, receiver):
    _, spans = receiver
    trace_id = "5b8efff798038103d269b633813fc60c"
    reply = requests.post(stack.url + "/generate", timeout=60, headers={
        "X-API-Key": stack.key, "traceparent": f"00-{trace_id}-eee19b7ec3c1b174-01"},
        json={"text_input": PROMPT, "max_tokens": 4})
    assert reply.status_code == 200, reply.text
    found = spans_of(spans, trace_id, every_hop)
    gateway = next(s for s in found if s["service"] == "llm-gateway")
    triton = chain(found, "triton", "InferRequest")
    assert triton["parent_span_id"] == gateway["span_id"]
    generate = chain(found, "llm-engine", "llm.generate")
    assert generate["attributes"]["llm.request_id"] == reply.headers["x-request-id"]
    assert PROMPT not in spans.read_text()
