"""The GPU check's CPU dry run: every step the lent GPU machine would run (the engine suite,
correctness against HF `generate`, throughput, int8) runs here on a tiny model, through the
same shell script, so the script cannot rot between the rare days a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_dry_run_passes_every_step_and_writes_the_report(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--cpu-dry-run"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] and report["device"] == "cpu"
    steps = report["steps"]
    assert list(steps) == ["environment", "engine_suite", "correctness", "throughput", "int8"]
    assert {name: step["status"] for name, step in steps.items()} == dict.fromkeys(steps, "passed")
    assert steps["engine_suite"]["result"]["tests"] > 0
    assert steps["engine_suite"]["result"]["failures"] == 0
    correct = steps["correctness"]["result"]
    assert correct["identical"] == correct["prompts"] == 8
    measured = steps["throughput"]["result"]
    assert measured["batch_1_tokens_per_s"] > 0 and measured["hf_static_tokens_per_s"] > 0
    assert steps["int8"]["result"]["how"] in ("the C forward's int8 products",  # a C compiler
                                              "torch dynamic int8")
    # Targets are shown but not judged on a CPU.
    assert [t["met"] for t in report["targets"]] == [None, None]
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| correctness | passed |" in table and "n/a (dry run)" in table


def test_without_a_gpu_it_stops_at_the_environment_and_says_to_dry_run(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    steps = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    assert list(steps) == ["environment"] and steps["environment"]["status"] == "failed"
    assert "--cpu-dry-run" in steps["environment"]["reason"]
