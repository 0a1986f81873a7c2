"""What a user runs: the command-line client, the tritonclient examples and perf_analyzer."""

from __future__ import annotations

import os
import subprocess
import sys

from tools.processes import ROOT

CLI = [sys.executable, "-m", "clients.llm_cli"]


def run(command: list[str], key: str | None, timeout: float = 120,
        **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, **env}
    environment.pop("LLM_API_KEY", None)
    if key is not None:
        environment["LLM_API_KEY"] = key
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=environment, cwd=ROOT)


def test_cli_prints_generated_text_over_http(gateway, api_key):
    done = run(CLI + ["--url", gateway.url, "--max-tokens", "12", "The list"], api_key)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.split()) >= 3


def test_cli_streams_over_http_and_matches_the_unary_answer(gateway, api_key):
    unary = run(CLI + ["--url", gateway.url, "--max-tokens", "16", "A function"], api_key)
    streamed = run(CLI + ["--url", gateway.url, "--stream", "--max-tokens", "16",
                          "A function"], api_key)
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == unary.stdout


def test_cli_generates_over_grpc(gateway, api_key):
    done = run(CLI + ["--url", gateway.grpc_url, "--grpc", "--max-tokens", "12", "The list"],
               api_key)
    http = run(CLI + ["--url", gateway.url, "--max-tokens", "12", "The list"], api_key)
    assert done.returncode == 0, done.stderr
    assert done.stdout == http.stdout


def test_cli_prints_a_rejected_request_with_its_status_and_request_id(gateway):
    done = run(CLI + ["--url", gateway.url, "The list"], "llmk_not_a_real_key")
    assert done.returncode == 1
    assert "error 403" in done.stderr and "request id" in done.stderr


def test_cli_without_a_key_explains_how_to_give_one(gateway):
    done = run(CLI + ["--url", gateway.url, "The list"], None)
    assert done.returncode == 2 and "LLM_API_KEY" in done.stderr


def test_cli_shows_validation_errors_from_the_model(gateway, api_key):
    done = run(CLI + ["--url", gateway.url, "--temperature", "9", "The list"], api_key)
    assert done.returncode == 1 and "`temperature` must be in [0, 2]" in done.stderr


def test_tritonclient_examples_run_through_the_gateway(gateway, api_key):
    for example in ("http_infer.py", "grpc_infer.py"):
        done = run([sys.executable, str(ROOT / "clients" / "examples" / example),
                    gateway.grpc_url], api_key)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip()


def test_perf_analyzer_example_measures_through_the_gateway(gateway):
    # The `benchmark` tier, as its header says: ~160 requests/s exceed premium's 100/s.
    key = gateway.issue("perf", "benchmark")
    done = run([str(ROOT / "clients" / "examples" / "perf_analyzer.sh"), gateway.grpc_url],
               key, timeout=240, PA_CONCURRENCY="2", PA_REQUESTS="20",
               PA_STABILITY="1000")  # a busy test machine is never stable; measure anyway
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("Throughput:") == 2
