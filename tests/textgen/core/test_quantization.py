"""The `quantization` switch: config parsing, and the CPU int8 paths on the demo model: the C
forward's int8 panels by default, torch's int8 modules in the HF executor, and what cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.textgen.executors.models import needs_cc
from textgen.core.config import ConfigError, load_engine_config
from textgen.core.loading import ModelLoadError, load_model
from textgen.executors.hf import select_executor
from textgen.executors.native import kernel

REPO_MODEL = Path("/srv/project/model_repository/llm")
CPU = torch.device("cpu")


def config(**params: str) -> dict:
    return {"parameters": {k: {"string_value": v} for k, v in params.items()}}


def test_quantization_defaults_to_none():
    assert load_engine_config(config(model_dir="m"), REPO_MODEL, env={}).quantization == "none"


def test_quantization_parameter_and_its_environment_override():
    assert load_engine_config(config(model_dir="m", quantization="int8"), REPO_MODEL,
                              env={}).quantization == "int8"
    assert load_engine_config(config(model_dir="m", quantization="none"), REPO_MODEL,
                              env={"LLM_QUANTIZATION": "INT8"}).quantization == "int8"


def test_unknown_quantization_names_the_choices():
    with pytest.raises(ConfigError, match="`quantization` must be one of none, int8, got 'int4'"):
        load_engine_config(config(model_dir="m", quantization="int4"), REPO_MODEL, env={})


def _linear_kinds(model) -> set[str]:
    return {type(m).__module__ + "." + type(m).__name__ for m in model.modules()
            if "Linear" in type(m).__name__}


def _served(model_dir: Path, executor: str = "auto", forward_path: str = "auto"):
    model, tokenizer = load_model(model_dir, CPU, torch.float32, quantization="int8")
    assert _linear_kinds(model) == {"torch.nn.modules.linear.Linear"}  # quantized next
    return select_executor(executor, model, 0, CPU, 512, forward_path,
                           quantization="int8"), tokenizer


@needs_cc
def test_int8_on_cpu_runs_in_the_c_forward_over_int8_panels(demo_model_dir: Path):
    executor, _ = _served(demo_model_dir)
    assert executor.forward_path == "c"
    held = executor.kernel.bytes_by_dtype()
    assert held["int8"] > 3 * held["float32"]  # the projections; float32: norms, rotary tables


@needs_cc
def test_int8_on_a_cpu_without_vnni_warns_that_float32_is_faster(demo_model_dir, monkeypatch,
                                                                caplog):
    import textgen.executors.hf as hf

    monkeypatch.setattr(hf, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    with caplog.at_level("WARNING", logger="textgen"):
        _served(demo_model_dir)
    assert any("no AVX512-VNNI" in r.message and "unset LLM_QUANTIZATION" in r.message
               for r in caplog.records)
    caplog.clear()
    monkeypatch.setattr(hf, "cpu_flags", lambda: frozenset({"avx2", "avx512_vnni"}))
    with caplog.at_level("WARNING", logger="textgen"):
        _served(demo_model_dir)
    assert not any("no AVX512-VNNI" in r.message for r in caplog.records)


@pytest.fixture(scope="module")
def fp32_and_hf_int8(demo_model_dir: Path):
    fp32, tokenizer = load_model(demo_model_dir, CPU, torch.float32)
    int8, _ = _served(demo_model_dir, executor="hf")
    return fp32, int8.model, tokenizer


def test_int8_in_the_hf_executor_replaces_the_linear_layers_but_keeps_the_tied_output_layer(
        fp32_and_hf_int8):
    _, int8, _ = fp32_and_hf_int8
    q_proj = int8.model.layers[0].self_attn.q_proj
    assert "quantized" in type(q_proj).__module__
    assert q_proj.weight().dtype == torch.qint8
    # The output layer shares the embedding matrix; it stays a float Linear so no copy appears.
    assert isinstance(int8.get_output_embeddings(), torch.nn.Linear)
    assert int8.get_output_embeddings().weight is int8.get_input_embeddings().weight


def test_int8_in_the_hf_executor_predicts_like_the_fp32_model(fp32_and_hf_int8):
    fp32, int8, tokenizer = fp32_and_hf_int8
    ids = torch.tensor([tokenizer.encode("The list module provides a number of functions")])
    with torch.inference_mode():
        a, b = fp32(input_ids=ids).logits, int8(input_ids=ids).logits
    agreement = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    assert agreement >= 0.8


def test_int8_without_a_c_compiler_falls_back_to_the_hf_executors_int8_and_says_so(
        demo_model_dir: Path, monkeypatch, caplog):
    monkeypatch.setattr(kernel.shutil, "which", lambda name: None)
    with caplog.at_level("INFO", logger="textgen"):
        executor, _ = _served(demo_model_dir)
    assert executor.name == "hf"
    assert "quantized" in type(executor.model.model.layers[0].mlp.down_proj).__module__
    assert "quantization int8 in torch's int8 modules of the Hugging Face executor: the C " \
           "forward is unavailable (no C compiler" in caplog.text


def test_int8_with_the_tensor_forward_fails_the_load_saying_why(demo_model_dir: Path):
    with pytest.raises(ModelLoadError, match="the tensor forward takes float weights only: "
                                             "use forward_path `auto` or `c`"):
        _served(demo_model_dir, forward_path="tensor")


def test_int8_on_cpu_needs_float32_weights(demo_model_dir: Path):
    with pytest.raises(ModelLoadError, match="use dtype `auto` or `float32`, got bfloat16"):
        load_model(demo_model_dir, CPU, torch.bfloat16, quantization="int8")
