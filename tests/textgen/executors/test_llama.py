"""The lean Llama-family forward computes what Hugging Face computes: greedy tokens identical to
HF `generate`, on the demo model and on randomly initialised Llama (grouped-query attention),
Mistral and Qwen2 (q/k/v biases) models; rows joining mid-generation and left padding included;
with its decode step and prefill in C (forward_kernel.c) and in tensor operations alike. What it cannot run
exactly goes to the HF executor, or fails the load when insisted on."""

from __future__ import annotations

import platform

import pytest
import torch
from transformers import (AutoModelForCausalLM, GPT2Config, LlamaConfig, MistralConfig,
                          Qwen2Config)

from textgen import forward_kernel
from textgen.executor import HFExecutor, select_executor
from textgen.llama_executor import LlamaExecutor
from textgen.loading import ModelLoadError, quantize_linear_int8

CPU = torch.device("cpu")
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


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_greedy_tokens_match_hf_generate_on_random_models_of_each_family(family):
    model = {"llama": lambda: random_model(LlamaConfig),
             "mistral": lambda: random_model(MistralConfig, sliding_window=None),
             "qwen2": lambda: random_model(Qwen2Config)}[family]()
    expected = [hf_greedy(model, p) for p in PROMPTS + LATE]
    executor = select_executor("auto", model, 0, CPU, 256)
    assert isinstance(executor, LlamaExecutor)
    assert executor.decode_step == "c"
    assert executor_greedy(executor, PROMPTS, LATE, model.config.eos_token_id) == expected
    tensor_step = LlamaExecutor(model, 0, CPU, 256, kernel_target=None)
    assert tensor_step.decode_step == "tensor"
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


# The C forward's paths: this CPU's (AVX-512 where it has it) and the generic loops that CPUs
# without AVX-512 run.
TARGETS = ["native"] + (["x86-64-v2"] if platform.machine() == "x86_64" else [])
SHAPES = {  # attention heads / KV heads x head size, and what each covers
    "4/2x16": dict(head_dim=16),
    "4/2x32": dict(head_dim=32),  # attention's weighted sum in registers
    "6/2x64": dict(num_attention_heads=6, num_key_value_heads=2, head_dim=64,  # GQA of 3
                   hidden_size=96),
    "3/1x128": dict(num_attention_heads=3, num_key_value_heads=1, head_dim=128, hidden_size=96),
    # no size a multiple of 32 or 16: the panels' last, partial panel and plain attention
    "odd sizes": dict(vocab_size=509, hidden_size=72, intermediate_size=100, head_dim=18),
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("shape", SHAPES)
def test_the_c_forward_and_the_tensor_forward_give_the_same_logits_for_many_rows(target, shape):
    """32 prompts of 1 to 45 tokens prefilled together (left padding in the cache), then
    decode steps of 32 rows (tiles of 8) and, after rows leave, 11 (tiles of 8, 1 and 1...)."""
    model = random_model(LlamaConfig, **SHAPES[shape])
    prompts = [[(7 * row + i) % 500 + 3 for i in range(1 + (13 * row) % 45)] for row in range(32)]
    runs = []
    with torch.inference_mode():
        for kernel_target in (target, None):
            executor = LlamaExecutor(model, 0, CPU, 256, kernel_target=kernel_target)
            assert executor.decode_step == ("c" if kernel_target else "tensor")
            logits = executor.prefill(prompts)
            steps = [logits]
            tokens = logits.argmax(dim=-1).tolist()
            for step in range(12):
                logits = executor.decode(tokens)
                steps.append(logits)
                tokens = logits.argmax(dim=-1).tolist()
                if step == 5:
                    order = executor.drop([row for row in range(32) if row % 3])
                    tokens = [tokens[row] for row in order]
            runs.append(steps)
    for c_step, tensor_step in zip(*runs):
        torch.testing.assert_close(c_step, tensor_step, rtol=1e-4, atol=1e-4)


def test_without_a_c_compiler_the_tensor_step_serves_and_the_log_says_why(monkeypatch, caplog):
    monkeypatch.setattr(forward_kernel.shutil, "which", lambda name: None)
    model = random_model(LlamaConfig)
    with caplog.at_level("INFO", logger="textgen"):
        executor = LlamaExecutor(model, 0, CPU, 256)
    assert executor.decode_step == "tensor"
    assert "decode step and prefill in tensor operations: no C compiler" in caplog.text
    expected = [hf_greedy(model, p) for p in PROMPTS + LATE]
    assert executor_greedy(executor, PROMPTS, LATE, model.config.eos_token_id) == expected


def test_the_decode_step_setting_turns_the_c_step_off_or_insists_on_it(monkeypatch):
    model = random_model(LlamaConfig)
    assert select_executor("auto", model, 0, CPU, 256, decode_step="tensor").decode_step \
        == "tensor"
    assert select_executor("auto", model, 0, CPU, 256, decode_step="c").decode_step == "c"
    with pytest.raises(ModelLoadError, match="decode step `c` needs the `llama` executor"):
        select_executor("hf", model, 0, CPU, 256, decode_step="c")
    monkeypatch.setattr(forward_kernel.shutil, "which", lambda name: None)
    with pytest.raises(ModelLoadError,
                       match="decode step `c` is not available here: no C compiler"):
        select_executor("auto", model, 0, CPU, 256, decode_step="c")


def test_the_c_forward_refuses_a_token_outside_the_vocabulary_instead_of_reading_past_it():
    model = random_model(LlamaConfig)
    executor = LlamaExecutor(model, 0, CPU, 256)
    with torch.inference_mode():
        with pytest.raises(ValueError, match="outside the model's table"):
            executor.prefill([[5, model.config.vocab_size, 7]])
        executor.prefill([[5, 6, 7]])
        with pytest.raises(ValueError, match="outside the model's tables"):
            executor.decode([model.config.vocab_size])


def test_the_c_forward_taking_the_weights_leaves_one_packed_copy_and_the_same_tokens():
    """With take_weights (the engine's way) the HF module's projections are emptied as the
    kernel packs them: the process holds the weights once, and the tokens do not change."""
    for tied in (True, False):
        model = random_model(LlamaConfig, tie_word_embeddings=tied)
        expected = [hf_greedy(model, p) for p in PROMPTS + LATE]
        executor = LlamaExecutor(model, 0, CPU, 256, take_weights=True)
        assert executor.decode_step == "c"
        layer = model.model.layers[0]
        for module in (layer.self_attn.q_proj, layer.mlp.down_proj,
                       model.get_output_embeddings()):
            assert module.weight.numel() == 0
        assert (model.get_input_embeddings().weight.numel() == 0) == tied
        assert executor_greedy(executor, PROMPTS, LATE, model.config.eos_token_id) == expected


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
