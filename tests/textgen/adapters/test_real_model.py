"""A rank-16 adapter on every linear layer of the real model (SmolLM2-135M-Instruct),
trained by tools/train_adapter on the repository's held-out text: the engine's tokens equal
PEFT's merged model's, with a base row in the same batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.textgen.adapters.conftest import merged_model
from tests.textgen.adapters.test_lora import greedy_rows
from tests.textgen.executors.models import NEW_TOKENS, hf_greedy, needs_cc
from textgen.adapters.peft_format import base_linears, read_adapter
from textgen.executors.llama import LlamaExecutor
from tools.train_adapter import ALL_LINEAR, train_adapter

CPU = torch.device("cpu")
HELDOUT = Path(__file__).resolve().parents[3] / "demo_model" / "heldout.txt"


@pytest.fixture(scope="module")
def real_adapter(real_model_dir: Path) -> Path:
    """Written once per machine, beside the real model (a few training steps: ~30 s)."""
    out = real_model_dir.parent / f"{real_model_dir.name}-adapter-r16"
    if not (out / "adapter_model.safetensors").exists():
        train_adapter(real_model_dir, HELDOUT.read_text()[:6000], out, rank=16, steps=4,
                      learning_rate=1e-2, seq_len=32, progress=False)
    return out


@pytest.mark.parametrize("kernel_target", [pytest.param("native", marks=needs_cc), None],
                         ids=["c", "tensor"])
def test_a_rank_16_adapter_on_every_linear_layer_gives_peft_merged_tokens(
        real_model_dir, real_adapter, kernel_target):
    tokenizer = AutoTokenizer.from_pretrained(real_model_dir)
    prompts = [tokenizer.encode(t) for t in ("The list", "def fibonacci(n):\n    ")]
    merged = merged_model(real_model_dir, real_adapter)
    expected = [hf_greedy(merged, p, NEW_TOKENS) for p in prompts]
    model = AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32).eval()
    base_expected = hf_greedy(model, prompts[0], NEW_TOKENS)
    linears = base_linears(model)
    executor = LlamaExecutor(model, model.config.pad_token_id, CPU, 2048,
                             kernel_target=kernel_target)
    adapter = read_adapter("r16", real_adapter, linears, 64, torch.float32, CPU)
    executor.prepare_adapter(adapter)
    assert adapter.rank == 16 and adapter.targets == sorted(ALL_LINEAR)
    eos = model.generation_config.eos_token_id
    got = greedy_rows(executor, prompts + [prompts[0]], [adapter, adapter, None],
                      eos if isinstance(eos, list) else [eos])
    assert got == expected + [base_expected]
