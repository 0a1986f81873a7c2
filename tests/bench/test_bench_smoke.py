"""`make bench` in smoke mode, once: the harness runs end to end and writes well-formed results.

It measures the session's Triton + gateway (`--url`), starts the naive baseline itself, runs
perf_analyzer over HTTP, gRPC and gRPC streaming, and the float32 vs int8 comparison. Nothing
here asserts a timing: only that every piece produced what the report is built from.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke(gateway, api_key, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    command = [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--smoke",
               "--url", gateway.url, "--api-key", api_key, "--systems", "ours,baseline",
               "--results-dir", str(out), "--no-progress"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert api_key not in done.stdout + done.stderr
    for written in out.rglob("*"):
        if written.is_file():
            assert api_key.encode() not in written.read_bytes(), written
    return out


@pytest.fixture(scope="module")
def results(smoke: Path) -> dict:
    return json.loads((smoke / "results.json").read_text())


def test_every_level_of_both_systems_completed_without_errors(results):
    levels = {(r["system"], r["workload"], r["concurrency"]) for r in results["loadgen"]}
    assert levels == {("ours", "fixed", 1), ("ours", "fixed", 2), ("ours", "mixed", 2),
                      ("baseline", "mixed", 2)}
    for row in results["loadgen"]:
        assert row["errors"] == {} and row["completed"] == row["sent"] > 0, row
        assert row["output_tokens"] > 0 and row["output_tokens_per_s"] > 0
        for metric in ("ttft_ms", "e2e_ms"):
            assert set(row[metric]) == {"p50", "p95", "p99", "mean"}
            assert 0 < row[metric]["p50"] <= row[metric]["p99"]


def test_fixed_workload_lengths_are_exact_through_the_gateway(smoke):
    with (smoke / "requests.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["workload"] == "fixed"]
    assert rows and {(r["prompt_tokens"], r["output_tokens"]) for r in rows} == {("64", "64")}


def test_headline_compares_ours_with_the_baseline(results):
    head = results["headline"]
    assert set(head["systems"]) == {"ours", "baseline"}
    assert head["ratios"]["ours_over_baseline_tokens"] > 0
    assert results["systems"]["ours"]["via_gateway"] is True
    assert results["systems"]["baseline"]["via_gateway"] is False
    assert any("JSON route" in note for note in results["systems"]["baseline"]["notes"])


def test_perf_analyzer_ran_http_grpc_and_grpc_streaming_and_kept_its_csv(smoke, results):
    runs = {(r["protocol"], r["model"]): r for r in results["perf_analyzer"]}
    assert set(runs) == {("http", "llm"), ("grpc", "llm"), ("grpc-stream", "llm_stream")}
    for run in runs.values():
        assert run["ok"], run
        assert run["inferences_per_s"] > 0
        header = (smoke / "perf_analyzer" / run["csv"]).read_text().splitlines()[0]
        assert header.startswith("Concurrency,Inferences/Second")
        assert "<key>" in run["command"]


def test_memory_of_the_started_baseline_and_the_weight_bytes(results):
    baseline = results["systems"]["baseline"]["memory"]["peak_rss_mib"]
    assert baseline["naive_server (uvicorn)"] > 50
    assert results["systems"]["ours"]["memory"] is None  # an external stack is not sampled
    assert results["weights"] == {"float32": _stored_weight_bytes(ROOT / "demo_model")}


def _stored_weight_bytes(model_dir: Path) -> int:
    """The bytes of the float32 tensors the model directory stores (each tied tensor once)."""
    from safetensors import safe_open

    with safe_open(model_dir / "model.safetensors", "pt") as weights:
        return sum(math.prod(weights.get_slice(name).get_shape()) * 4 for name in weights.keys())


def test_int8_has_fewer_weight_bytes_and_a_finite_perplexity(results):
    quant = results["quantization"]
    assert quant["int8"]["weight_bytes_total"] < quant["none"]["weight_bytes_total"]
    # The C forward's int8 panels, or torch's qint8 modules where it cannot be built.
    assert {"int8", "qint8"} & set(quant["int8"]["weight_bytes"])
    for mode in ("none", "int8"):
        assert math.isfinite(quant[mode]["perplexity"]["perplexity"])
        assert quant[mode]["tokens_per_s_batch1"] > 0


def test_plots_are_png_files(smoke, results):
    assert results["plots"]
    for name in results["plots"]:
        data = (smoke / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name


def test_summary_and_raw_csv_are_written(smoke, results):
    summary = (smoke / "summary.md").read_text()
    for heading in ("## Headline", "## Load generator", "## perf_analyzer",
                    "## Memory", "## Full precision vs 8-bit"):
        assert heading in summary
    with (smoke / "loadgen.csv").open(newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(results["loadgen"])
