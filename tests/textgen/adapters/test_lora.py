"""Adapters applied per row inside the shared batch: greedy tokens identical to PEFT's merged
model for each adapter, on both executors, with base and adapter rows mixed in one batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.textgen.adapters.conftest import ADAPTERS, merged_model
from tests.textgen.executors.models import NEW_TOKENS, hf_greedy, needs_cc
from textgen.adapters.lora import StepLora, fuse
from textgen.adapters.peft_format import base_linears, read_adapter
from textgen.executors.hf import HFExecutor
from textgen.executors.llama import LlamaExecutor

CPU = torch.device("cpu")
TEXTS = ("The list", "A function is", "Exceptions")


@pytest.fixture(scope="module")
def tokenizer(demo_model_dir: Path):
    return AutoTokenizer.from_pretrained(demo_model_dir)


@pytest.fixture(scope="module")
def expected(demo_model_dir, adapter_dirs, tokenizer) -> dict[tuple[str, str], list[int]]:
    """(adapter or "", prompt) -> PEFT's merged model's greedy tokens (the base's for "")."""
    models = {"": AutoModelForCausalLM.from_pretrained(demo_model_dir).eval(),
              **{name: merged_model(demo_model_dir, path) for name, path in adapter_dirs.items()}}
    return {(name, text): hf_greedy(model, tokenizer.encode(text))
            for name, model in models.items() for text in TEXTS}


def test_each_adapter_changes_the_greedy_answer(expected):
    for text in TEXTS:
        answers = {tuple(expected[(name, text)]) for name in ("",) + ADAPTERS}
        assert len(answers) == 3, text


def greedy_rows(executor, prompts, adapters, eos) -> list[list[int]]:
    """Greedy decoding of the rows together, each with its adapter (`eos`: the id or ids
    banned, as `min_new_tokens` bans them in HF generate)."""
    outputs: list[list[int]] = [[] for _ in prompts]
    with torch.inference_mode():
        logits = executor.prefill(prompts, (), adapters)
        for _ in range(NEW_TOKENS):
            logits[:, eos] = float("-inf")
            tokens = logits.argmax(dim=-1).tolist()
            for row, token in enumerate(tokens):
                outputs[row].append(token)
            logits = executor.decode(tokens, adapters)
    return outputs


@pytest.mark.parametrize("executor_name", [pytest.param("c", marks=needs_cc), "tensor", "hf"])
def test_a_batch_mixing_base_and_both_adapters_gives_each_row_peft_merged_tokens(
        executor_name, demo_model_dir, adapter_dirs, tokenizer, expected):
    """The C forward, the Llama tensor forward and the HF module."""
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir, dtype=torch.float32).eval()
    linears = base_linears(model)
    executor = (HFExecutor(model, 1, CPU, lora=True) if executor_name == "hf" else
                LlamaExecutor(model, 1, CPU, 512,
                              kernel_target="native" if executor_name == "c" else None))
    adapters = {name: read_adapter(name, path, linears, 64, torch.float32, CPU)
                for name, path in adapter_dirs.items()}
    for adapter in adapters.values():
        executor.prepare_adapter(adapter)
    assert executor.forward_path == {"c": "c", "tensor": "tensor", "hf": "module"}[
        executor_name]
    rows = [(name, text) for text in TEXTS for name in ("",) + ADAPTERS]
    got = greedy_rows(executor, [tokenizer.encode(text) for _, text in rows],
                      [adapters.get(name) for name, _ in rows], tokenizer.eos_token_id)
    assert got == [expected[row] for row in rows]
    # One adapter on every row (the whole-batch product) gives the same.
    alone = [("notice", text) for text in TEXTS]
    executor.reset()
    got = greedy_rows(executor, [tokenizer.encode(text) for _, text in alone],
                      [adapters["notice"]] * len(alone), tokenizer.eos_token_id)
    assert got == [expected[row] for row in alone]


def test_fused_products_equal_each_modules_own(demo_model_dir, adapter_dirs):
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir)
    adapter = read_adapter("notice", adapter_dirs["notice"], base_linears(model), 64,
                           torch.float32, CPU)
    names = [f"model.layers.0.self_attn.{p}_proj" for p in "qkv"]
    a, b = fuse(adapter, [(n, 128) for n in names])
    x = torch.randn(3, 128)
    separate = torch.cat([x @ adapter.weights[n][0].T @ adapter.weights[n][1].T for n in names],
                         dim=-1)
    torch.testing.assert_close(x @ a.T @ b.T, separate)


def test_a_step_without_adapter_rows_adds_nothing():
    assert StepLora.of([None, None], CPU) is None
