"""Model settings from config.pbtxt parameters with environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from textgen.core.config import ConfigError, Limits, load_engine_config

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
    ({"model_dir": "m", "forward_path": "asm"}, "`forward_path` must be one of auto, c, tensor"),
    ({"model_dir": "m", "engine": "tgi"}, "`engine` must be one of auto, transformers, vllm"),
    ({"model_dir": "m", "engine_nice": "-21"}, "`engine_nice` must be an integer from -20 to 19"),
    ({"model_dir": "m", "engine_nice": "high"}, "`engine_nice` must be an integer from -20"),
    ({"model_dir": "m", "stream_interval_ms": "-1"}, "`stream_interval_ms` must be an integer "
                                                     "from 0 to 1000"),
    ({"model_dir": "m", "max_prefill_tokens": "0"}, "`max_prefill_tokens` must be a positive"),
    ({"model_dir": "m", "max_prompt_logits_mib": "1e3"},
     "`max_prompt_logits_mib` must be a positive integer"),
])
def test_bad_settings_fail_with_a_message_naming_the_parameter(params, message):
    with pytest.raises(ConfigError, match=message):
        load_engine_config(config(**params), REPO_MODEL, env={})


def test_limits_left_auto_follow_the_models_context():
    loaded = load_engine_config(config(model_dir="m", max_prompt_tokens="auto"), REPO_MODEL,
                                env={})
    assert (loaded.limits.max_prompt_tokens, loaded.limits.max_new_tokens) == (None, None)
    limits = loaded.limits.for_model(8192, 49152)
    assert (limits.max_prompt_tokens, limits.max_new_tokens, limits.default_max_tokens,
            limits.max_prompt_chars) == (8191, 8192, 64, 8191 * 16)


def test_a_configured_limit_lowers_the_models_but_never_raises_it():
    lowered = Limits(max_prompt_tokens=1000, max_new_tokens=300).for_model(8192, 100)
    assert (lowered.max_prompt_tokens, lowered.max_new_tokens) == (1000, 300)
    capped = Limits(max_prompt_tokens=4096, max_new_tokens=4096,
                    default_max_tokens=1024).for_model(512, 100)
    assert (capped.max_prompt_tokens, capped.max_new_tokens, capped.default_max_tokens) == (
        511, 512, 512)


def test_limits_and_the_token_budget_are_overridden_from_the_environment():
    loaded = load_engine_config(config(model_dir="m"), REPO_MODEL,
                                env={"LLM_MAX_PROMPT_TOKENS": "2000",
                                     "LLM_MAX_NEW_TOKENS": "500",
                                     "LLM_MAX_BATCH_TOTAL_TOKENS": "65536",
                                     "LLM_MAX_PROMPT_LOGITS_MIB": "4096"})
    assert (loaded.limits.max_prompt_tokens, loaded.limits.max_new_tokens,
            loaded.max_batch_total_tokens, loaded.max_prompt_logits_mib) == (
        2000, 500, 65536, 4096)
    assert load_engine_config(config(model_dir="m"), REPO_MODEL, env={}
                              ).max_prompt_logits_mib == 1024


@pytest.mark.parametrize("where", ["parameter", "environment"])
def test_the_renamed_decode_step_setting_still_works_and_the_log_names_its_new_name(
        where, caplog):
    params = {"model_dir": "demo_model"} | ({"decode_step": "tensor"} if where == "parameter"
                                            else {})
    env = {"LLM_DECODE_STEP": "tensor"} if where == "environment" else {}
    with caplog.at_level("WARNING", logger="textgen"):
        loaded = load_engine_config(config(**params), REPO_MODEL, env=env)
    assert loaded.forward_path == "tensor"
    assert "`decode_step` (LLM_DECODE_STEP) is now `forward_path` (LLM_FORWARD_PATH)" \
        in caplog.text


def test_the_new_forward_path_setting_wins_over_the_old_name():
    loaded = load_engine_config(config(model_dir="demo_model", decode_step="tensor"),
                                REPO_MODEL, env={"LLM_FORWARD_PATH": "c"})
    assert loaded.forward_path == "c"
