"""Reading a PEFT LoRA directory, and every refusal naming what is wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from textgen.adapters.peft_format import (WEIGHTS_FILE, AdapterError, base_linears, check_name,
                                          config_linears, read_adapter)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def linears(demo_model_dir: Path) -> dict[str, tuple[int, int]]:
    return base_linears(AutoModelForCausalLM.from_pretrained(demo_model_dir))


def read(path: Path, linears, max_rank: int = 64):
    return read_adapter("a", path, linears, max_rank, torch.float32, CPU)


def copy(adapter: Path, tmp_path: Path) -> Path:
    out = tmp_path / "adapter"
    shutil.copytree(adapter, out)
    return out


def edit_config(path: Path, **changes) -> None:
    config = json.loads((path / "adapter_config.json").read_text())
    (path / "adapter_config.json").write_text(json.dumps({**config, **changes}))


def test_bundled_adapter_reads_with_its_rank_scaling_and_every_linear_of_each_layer(
        adapter_dirs, linears):
    adapter = read(adapter_dirs["notice"], linears)
    assert (adapter.rank, adapter.scaling) == (8, 2.0)  # lora_alpha 16 over r 8
    assert adapter.targets == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj",
                               "up_proj", "v_proj"]
    assert len(adapter.weights) == 7 * 4  # the demo model's 4 layers
    a, b = adapter.weights["model.layers.0.self_attn.q_proj"]
    assert a.shape == (8, 128) and b.shape == (128, 8)


def test_lm_head_is_not_a_target(linears):
    assert not any(name.startswith("lm_head") for name in linears)


def test_the_linears_read_from_the_config_alone_are_the_loaded_models(demo_model_dir, linears):
    assert config_linears(demo_model_dir) == linears


def test_each_read_of_an_adapter_has_its_own_serial(adapter_dirs, linears):
    first, again = (read(adapter_dirs["notice"], linears) for _ in range(2))
    assert 0 < first.serial < again.serial


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 65, "../etc", "a/b"])
def test_bad_adapter_names_are_refused(name):
    with pytest.raises(AdapterError, match="must be 1 to 64 letters"):
        check_name(name)


def test_missing_directory_and_missing_files_are_named(adapter_dirs, linears, tmp_path):
    with pytest.raises(AdapterError, match="is not a directory"):
        read(tmp_path / "nowhere", linears)
    path = copy(adapter_dirs["notice"], tmp_path)
    (path / WEIGHTS_FILE).unlink()
    with pytest.raises(AdapterError, match="has no adapter_model.safetensors"):
        read(path, linears)


@pytest.mark.parametrize("changes, message", [
    ({"peft_type": "IA3"}, "only LORA adapters"),
    ({"use_dora": True}, "`use_dora` is True"),
    ({"bias": "all"}, "`bias` is 'all'"),
    ({"modules_to_save": ["lm_head"]}, "`modules_to_save`"),
    ({"r": 16}, "rank 8 but its adapter_config.json says r=16"),
])
def test_options_this_engine_does_not_compute_are_refused(adapter_dirs, linears, tmp_path,
                                                          changes, message):
    path = copy(adapter_dirs["notice"], tmp_path)
    edit_config(path, **changes)
    with pytest.raises(AdapterError, match=message):
        read(path, linears)


def test_rank_above_the_servers_bound_says_which_setting_raises_it(adapter_dirs, linears):
    with pytest.raises(AdapterError, match="r=8 is outside 1..4.*LLM_MAX_LORA_RANK"):
        read(adapter_dirs["notice"], linears, max_rank=4)


def test_adapter_of_another_base_model_is_a_base_model_mismatch(adapter_dirs, linears, tmp_path):
    path = copy(adapter_dirs["notice"], tmp_path)
    tensors = load_file(str(path / WEIGHTS_FILE))
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    tensors[key] = torch.zeros(8, 256)
    save_file(tensors, str(path / WEIGHTS_FILE))
    with pytest.raises(AdapterError, match="base model mismatch: `model.layers.0.self_attn.q_proj"
                                           "` maps 128 -> 128 features in the base model but "
                                           "256 -> 128"):
        read(path, linears)


def test_target_module_the_base_lacks_is_named(adapter_dirs, linears, tmp_path):
    path = copy(adapter_dirs["notice"], tmp_path)
    tensors = load_file(str(path / WEIGHTS_FILE))
    for half, shape in (("A", (8, 128)), ("B", (128, 8))):
        tensors[f"base_model.model.model.layers.7.self_attn.q_proj.lora_{half}.weight"] = \
            torch.zeros(shape)
    save_file(tensors, str(path / WEIGHTS_FILE))
    with pytest.raises(AdapterError, match="`model.layers.7.self_attn.q_proj` is not a linear "
                                           "layer of the base model"):
        read(path, linears)
