"""Which engine serves the model (`engine` / LLM_ENGINE), and what the vLLM one refuses."""

from __future__ import annotations

import importlib.util

import pytest

from textgen.core.config import EngineConfig
from textgen.core.loading import ModelLoadError
from textgen.core.outputs import EngineObserver
from textgen.engines import choose_engine, create_engine
from textgen.vllm_engine.engine import quantization_for, vllm_supports

VLLM_INSTALLED = importlib.util.find_spec("vllm") is not None


def test_auto_picks_the_transformers_engine_on_a_cpu(demo_model_dir):
    assert choose_engine(EngineConfig(model_dir=demo_model_dir, device="cpu")) == "transformers"


def test_an_explicit_engine_is_taken_as_named(demo_model_dir):
    for name in ("transformers", "vllm"):
        assert choose_engine(EngineConfig(model_dir=demo_model_dir, engine=name)) == name


@pytest.mark.skipif(VLLM_INSTALLED, reason="this environment has vLLM; the check is for one "
                                           "without it (the project's own .venv)")
def test_engine_vllm_without_vllm_installed_fails_the_load_saying_how_to_install_it(
        demo_model_dir):
    assert "`make vllm`" in (vllm_supports(demo_model_dir) or "")
    with pytest.raises(ModelLoadError, match=r"engine `vllm` cannot serve .*make vllm"):
        create_engine(EngineConfig(model_dir=demo_model_dir, engine="vllm"), EngineObserver())


def test_int8_maps_to_vllms_fp8_on_cuda_and_is_refused_on_a_cpu_naming_the_options():
    assert quantization_for("none", "cpu") is None and quantization_for("none", "cuda") is None
    assert quantization_for("int8", "cuda") == "fp8"
    with pytest.raises(ModelLoadError) as refused:
        quantization_for("int8", "cpu")
    for option in ("AWQ", "GPTQ", "compressed-tensors", "engine `transformers`", "fp8"):
        assert option in str(refused.value)
