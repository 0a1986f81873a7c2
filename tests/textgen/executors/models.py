"""Small models and the reference the executor tests share: randomly initialised models of
each family, HF `generate` alone on one prompt, and greedy decoding through an executor with
rows joining mid-generation."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

CPU = torch.device("cpu")
# The C forward is compiled where the model loads; a machine without a compiler (the lent GPU
# machine may have none) serves with the tensor forward instead, which its own tests cover.
needs_cc = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                              reason="no C compiler (cc or gcc): the C forward cannot be built")
NEW_TOKENS = 24
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def random_model(config_class, **extra):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config_class(**{**TINY, **extra})).eval()


def hf_greedy(model, prompt: list[int], new_tokens: int = NEW_TOKENS) -> list[int]:
    """HF `generate` alone on one prompt: the reference (EOS banned so lengths match)."""
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=model.config.pad_token_id)
    return out[0, len(prompt):].tolist()


def executor_greedy(executor, prompts: list[list[int]], late: list[list[int]],
                    eos: int) -> list[list[int]]:
    """Greedy decoding of `prompts` together (left-padded), `late` joining after 5 steps."""

    def pick(logits: torch.Tensor) -> list[int]:
        logits[:, eos] = float("-inf")
        return logits.argmax(dim=-1).tolist()

    outputs: list[list[int]] = [[] for _ in prompts + late]
    with torch.inference_mode():
        tokens = pick(executor.prefill(prompts))
        for step in range(NEW_TOKENS + 5):
            live = len(tokens)
            for row, token in enumerate(tokens):
                outputs[row].append(token)
            if step == 4:
                tokens += pick(executor.prefill(late))
                for row, token in enumerate(tokens[live:], start=live):
                    outputs[row].append(token)
            tokens = pick(executor.decode(tokens))
    return [o[:NEW_TOKENS] for o in outputs]


PROMPTS = [[5, 17, 99, 3, 250, 31, 8], [44], [7, 7, 300, 12]]
LATE = [[101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111], [9, 10]]
