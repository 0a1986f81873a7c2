"""A model directory that cannot be served fails the load with a readable message."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.processes import triton_process, triton_settings


def failed_load_log(tmp_path: Path, name: str, **env: str) -> str:
    """Start Triton with `env`, see it exit with an error, and return its log."""
    settings = triton_settings(tmp_path, **env)
    server = triton_process(settings, name=name, **env).start()
    try:
        exit_code = server.wait_exit(timeout=120)
    finally:
        server.stop()
    assert exit_code != 0
    return server.log.read_text(errors="replace")


@pytest.mark.slow
def test_missing_model_directory_fails_the_load_naming_the_path(tmp_path: Path):
    missing = tmp_path / "no_such_model"
    log = failed_load_log(tmp_path, "triton-missing-model", LLM_MODEL_DIR=str(missing))
    assert f"model directory {missing} does not exist" in log
    assert "LLM_MODEL_DIR" in log


@pytest.mark.slow
def test_int8_on_the_vllm_engine_on_a_cpu_fails_the_load_naming_what_works(tmp_path: Path):
    log = failed_load_log(tmp_path, "triton-vllm-int8", LLM_ENGINE="vllm",
                          LLM_QUANTIZATION="int8", LLM_DEVICE="cpu")
    assert "quantization `int8` is not available with engine `vllm` on a CPU" in log
    assert "engine `transformers`" in log and "AWQ, GPTQ or compressed-tensors" in log
