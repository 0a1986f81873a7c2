"""Model settings from config.pbtxt parameters with environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from textgen.config import ConfigError, load_engine_config

REPO_MODEL = Path("/srv/project/model_repository/llm")


def config(**params: str) -> dict:
    return {"parameters": {k: {"string_value": v} for k, v in params.items()}}


def test_relative_model_dir_starts_at_the_project_root():
    loaded = load_engine_config(config(model_dir="demo_model"), REPO_MODEL, env={})
    assert loaded.model_dir == Path("/srv/project/demo_model")


def test_environment_overrides_the_config_parameters():
    loaded = load_engine_config(config(model_dir="demo_model", device="cpu"), REPO_MODEL,
                                env={"LLM_MODEL_DIR": "/models/final_model",
                                     "LLM_DEVICE": "cuda", "LLM_SCHEDULING": "static",
                                     "LLM_ENGINE": "vllm"})
    assert (loaded.model_dir, loaded.device, loaded.scheduling, loaded.engine) == (
        Path("/models/final_model"), "cuda", "static", "vllm")


def test_limits_are_read_from_the_parameters():
    loaded = load_engine_config(config(model_dir="m", max_new_tokens="100",
                                       default_max_tokens="20", max_num_seqs="4"),
                                REPO_MODEL, env={})
    assert (loaded.limits.max_new_tokens, loaded.limits.default_max_tokens,
            loaded.max_num_seqs) == (100, 20, 4)


@pytest.mark.parametrize("params,message", [
    ({}, "`model_dir` is empty"),
    ({"model_dir": "m", "dtype": "int3"}, "`dtype` must be one of auto, float32"),
    ({"model_dir": "m", "max_new_tokens": "-5"}, "`max_new_tokens` must be a positive integer"),
    ({"model_dir": "m", "max_new_tokens": "8", "default_max_tokens": "9"},
     "`default_max_tokens` \\(9\\) must not exceed `max_new_tokens` \\(8\\)"),
    ({"model_dir": "m", "executor": "onnx"}, "`executor` must be one of auto, hf, llama"),
    ({"model_dir": "m", "decode_step": "asm"}, "`decode_step` must be one of auto, c, tensor"),
    ({"model_dir": "m", "engine": "tgi"}, "`engine` must be one of auto, transformers, vllm"),
    ({"model_dir": "m", "engine_nice": "-21"}, "`engine_nice` must be an integer from -20 to 19"),
    ({"model_dir": "m", "engine_nice": "high"}, "`engine_nice` must be an integer from -20"),
    ({"model_dir": "m", "stream_interval_ms": "-1"}, "`stream_interval_ms` must be an integer "
                                                     "from 0 to 1000"),
    ({"model_dir": "m", "max_prefill_tokens": "0"}, "`max_prefill_tokens` must be a positive"),
])
def test_bad_settings_fail_with_a_message_naming_the_parameter(params, message):
    with pytest.raises(ConfigError, match=message):
        load_engine_config(config(**params), REPO_MODEL, env={})
