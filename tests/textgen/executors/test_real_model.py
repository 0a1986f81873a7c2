"""The executors on a real model (SmolLM2-135M-Instruct, float32: 30 layers, 9 query heads over
3 KV heads of 64, tied embeddings): the speed-ups the demo model cannot judge must still
compute what Hugging Face computes, on prompts up to ~2,000 tokens of mixed lengths in one
batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.textgen.executors.models import hf_greedy
from textgen.executors.llama import LlamaExecutor

CPU = torch.device("cpu")
NEW_TOKENS = 12
HELDOUT = Path(__file__).resolve().parents[3] / "demo_model" / "heldout.txt"


@pytest.fixture(scope="module")
def real(real_model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(real_model_dir)
    model = AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32).eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def prompts(real) -> list[list[int]]:
    """A chat turn, two short texts and one of ~2,000 tokens, in one batch."""
    _, tokenizer = real
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, tokenize=False)
    long_text = HELDOUT.read_text()
    long_ids = tokenizer.encode(long_text)[:2000]
    assert len(long_ids) == 2000, "heldout.txt is shorter than the long prompt needs"
    return [tokenizer.encode(chat), tokenizer.encode("The list"), long_ids,
            tokenizer.encode("def fibonacci(n):\n    ")]


def executor_greedy(executor, prompts: list[list[int]], banned: list[int]) -> list[list[int]]:
    """Greedy, the end-of-sequence tokens banned as `min_new_tokens` bans them in HF's."""
    outputs: list[list[int]] = [[] for _ in prompts]
    with torch.inference_mode():
        logits = executor.prefill(prompts)
        for _ in range(NEW_TOKENS):
            logits[:, banned] = float("-inf")
            tokens = logits.argmax(dim=-1).tolist()
            for row, token in enumerate(tokens):
                outputs[row].append(token)
            logits = executor.decode(tokens)
    return outputs


def test_the_real_model_answers_the_capital_of_france(real, prompts):
    model, tokenizer = real
    assert tokenizer.decode(hf_greedy(model, prompts[0], NEW_TOKENS)).startswith(
        "The capital of France is Paris.")


@pytest.mark.parametrize("kernel_target", ["native", None], ids=["c", "tensor"])
def test_greedy_tokens_match_hf_generate_on_the_real_model(real, prompts, kernel_target):
    model, _ = real
    expected = [hf_greedy(model, p, NEW_TOKENS) for p in prompts]
    executor = LlamaExecutor(model, model.config.pad_token_id, CPU,
                             model.config.max_position_embeddings, kernel_target=kernel_target)
    assert executor.forward_path == ("c" if kernel_target else "tensor")
    eos = model.generation_config.eos_token_id
    assert executor_greedy(executor, prompts, eos if isinstance(eos, list) else [eos]) == expected


def test_the_c_forward_gives_the_hf_modules_logits_on_the_real_model(real, prompts):
    model, _ = real
    executor = LlamaExecutor(model, model.config.pad_token_id, CPU, 4096)
    with torch.inference_mode():
        got = executor.prefill(prompts)
        expected = torch.cat([model(torch.tensor([p])).logits[:, -1] for p in prompts])
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=2e-3)
