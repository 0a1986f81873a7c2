"""benchmarks/engine_only.py runs both policies, and its with/without comparisons, end to end (its
numbers are not checked)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_engine_only_reports_tokens_per_second_for_both_policies():
    run = subprocess.run([sys.executable, "-m", "benchmarks.engine_only",
                          "--requests", "6", "--clients", "3", "--repeats", "1"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    for policy in ("continuous", "static"):
        assert re.search(rf"{policy}\s+[\d,]+ tokens/s \(min [\d,]+, max [\d,]+\)\s+TTFT p50\s+\d+ ms",
                         run.stdout), run.stdout


@pytest.mark.parametrize("flag,field", [("--controls", "presence_penalty"),
                                        ("--logprobs", "logprobs")])
def test_engine_only_compares_the_same_requests_with_and_without_extra_fields(flag, field):
    run = subprocess.run([sys.executable, "-m", "benchmarks.engine_only", flag,
                          "--requests", "6", "--clients", "3", "--repeats", "1"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"'{field}'" in run.stdout, run.stdout
    assert re.search(r"plain\s+[\d,]+ tokens/s", run.stdout), run.stdout
    assert re.search(r"with them\s+[\d,]+ tokens/s .* per-pass ratio median \d\.\d{3}",
                     run.stdout), run.stdout


def test_engine_only_compares_n_sequences_first_tokens_with_one_sequences():
    run = subprocess.run([sys.executable, "-m", "benchmarks.engine_only", "--choices", "2",
                          "--requests", "2", "--repeats", "1", "--workload", "fixed"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    assert re.search(r"n=1\s+TTFT p50\s+[\d.]+ ms", run.stdout), run.stdout
    assert re.search(r"n=2\s+every first token p50\s+[\d.]+ ms; per-request ratio median "
                     r"\d\.\d{3}", run.stdout), run.stdout
