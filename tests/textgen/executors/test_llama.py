"""The lean Llama-family forward computes what Hugging Face computes: greedy tokens identical to
HF `generate`, on the demo model and on randomly initialised Llama (grouped-query attention),
Mistral and Qwen2 (q/k/v biases) models; rows joining mid-generation and left padding included;
with its decode step and prefill in tensor operations (the C forward's own tests are in
native/test_kernel.py). What it cannot run exactly goes to the HF executor, or fails the load
when insisted on."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

from tests.textgen.executors.models import (CPU, LATE, PROMPTS, executor_greedy, hf_greedy,
                                            needs_cc, random_model)
from textgen.core.loading import ModelLoadError, quantize_linear_int8
from textgen.executors.hf import HFExecutor, select_executor
from textgen.executors.llama import LlamaExecutor


@needs_cc
@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_greedy_tokens_match_hf_generate_on_random_models_of_each_family(family):
    model = {"llama": lambda: random_model(LlamaConfig),
             "mistral": lambda: random_model(MistralConfig, sliding_window=None),
             "qwen2": lambda: random_model(Qwen2Config)}[family]()
    expected = [hf_greedy(model, p) for p in PROMPTS + LATE]
    executor = select_executor("auto", model, 0, CPU, 256)
    assert isinstance(executor, LlamaExecutor)
    assert executor.forward_path == "c"
    assert executor_greedy(executor, PROMPTS, LATE, model.config.eos_token_id) == expected
    tensor_step = LlamaExecutor(model, 0, CPU, 256, kernel_target=None)
    assert tensor_step.forward_path == "tensor"
    assert executor_greedy(tensor_step, PROMPTS, LATE, model.config.eos_token_id) == expected


def test_greedy_tokens_match_hf_generate_on_the_demo_model(demo_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir).eval()
    prompts = [tokenizer.encode(t) for t in ("The list", "A function is", "Exceptions")]
    late = [tokenizer.encode("Python is a programming language that")]
    expected = [hf_greedy(model, p) for p in prompts + late]
    for executor in (LlamaExecutor(model, 1, CPU, 512),
                     LlamaExecutor(model, 1, CPU, 512, kernel_target=None),
                     HFExecutor(model, 1, CPU)):
        assert executor_greedy(executor, prompts, late, tokenizer.eos_token_id) == expected, \
            executor.name


def test_fusing_the_projections_leaves_the_hf_module_computing_the_same():
    model = random_model(LlamaConfig)
    ids = torch.tensor([PROMPTS[0]])
    with torch.inference_mode():
        before = model(ids).logits
        LlamaExecutor(model, 0, CPU, 256, kernel_target=None)
        after = model(ids).logits
    assert torch.equal(before, after)
    attn = model.model.layers[0].self_attn
    assert attn.k_proj.weight.untyped_storage().data_ptr() == \
        attn.q_proj.weight.untyped_storage().data_ptr()  # views: no weight held twice


@pytest.mark.parametrize("model_factory, reason", [
    (lambda: random_model(MistralConfig, sliding_window=16), "sliding-window"),
    (lambda: quantize_linear_int8(random_model(LlamaConfig)), "quantized"),
    (lambda: AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=2)),
     "architecture `gpt2`"),
])
def test_models_it_cannot_run_exactly_go_to_the_hf_executor(model_factory, reason):
    model = model_factory().eval()
    assert reason in LlamaExecutor.unsupported_reason(model)
    assert isinstance(select_executor("auto", model, 0, CPU, 128), HFExecutor)
    with pytest.raises(ModelLoadError, match=f"executor `llama` cannot run this model: .*{reason}"):
        select_executor("llama", model, 0, CPU, 128)


def test_prefill_returns_every_position_only_for_the_prompts_that_ask(demo_model_dir):
    """Prompt logprobs need the logits after every prompt token; the other prompts of the same
    prefill keep their last position only, and the cache is the same either way."""
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir).eval()
    prompts = [[5, 17, 33, 9, 41, 7], [12, 3], [8, 22, 19, 4]]
    with torch.inference_mode():
        reference = [model(torch.tensor([p])).logits[0] for p in prompts]
        for executor in (LlamaExecutor(model, 1, CPU, 512),
                         LlamaExecutor(model, 1, CPU, 512, kernel_target=None),
                         HFExecutor(model, 1, CPU)):
            rows = executor.prefill(prompts, [True, False, True])
            assert rows.shape[0] == len(prompts[0]) + 1 + len(prompts[2]), executor.name
            expected = torch.cat([reference[0], reference[1][-1:], reference[2]])
            torch.testing.assert_close(rows, expected, atol=1e-4, rtol=1e-4)
            # The next step continues every row as if no position had been asked for.
            after = executor.decode([1, 2, 3])
            plain = HFExecutor(model, 1, CPU)
            plain.prefill(prompts)
            torch.testing.assert_close(after, plain.decode([1, 2, 3]), atol=1e-4, rtol=1e-4)
