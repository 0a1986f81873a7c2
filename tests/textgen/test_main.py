"""`python -m textgen`: one generation with the engine the service would pick, no Triton."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def textgen(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "textgen", *args], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def test_generates_once_and_reports_what_ran_as_one_json_line() -> None:
    done = textgen("--model-dir", "demo_model", "--max-tokens", "5", LLM_DEVICE="cpu")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["engine"] == "transformers" and report["device"] == "cpu"
    assert report["completion_tokens"] == 5 and report["finish_reason"] == "length"
    assert report["text"] and not report["error"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible here")
def test_takes_the_models_settings_and_says_what_is_wrong_without_a_traceback() -> None:
    done = textgen("--model-dir", "demo_model", LLM_DEVICE="cuda")
    assert done.returncode == 2
    assert done.stderr.startswith("error: device `cuda` was requested but no CUDA device")
    assert "Traceback" not in done.stderr
