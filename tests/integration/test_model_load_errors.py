"""A model directory that cannot be served fails the load with a readable message."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import triton_process, triton_settings


@pytest.mark.slow
def test_missing_model_directory_fails_the_load_naming_the_path(tmp_path: Path):
    missing = tmp_path / "no_such_model"
    settings = triton_settings(tmp_path, LLM_MODEL_DIR=str(missing))
    server = triton_process(settings, name="triton-missing-model").start()
    try:
        exit_code = server.wait_exit(timeout=90)
    finally:
        server.stop()
    log = server.log.read_text(errors="replace")
    assert exit_code != 0
    assert f"model directory {missing} does not exist" in log
    assert "LLM_MODEL_DIR" in log
