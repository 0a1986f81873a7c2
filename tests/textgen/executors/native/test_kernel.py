"""The native forward (textgen/executors/native): the same logits as the tensor forward on every
path it compiles for and every shape it handles, the weights held once, bad tokens refused,
and the tensor forward serving where no C compiler is."""

from __future__ import annotations

import platform

import pytest
import torch
from transformers import LlamaConfig

from tests.textgen.executors.models import (CPU, LATE, PROMPTS, executor_greedy, hf_greedy,
                                            needs_cc, random_model)
from textgen.core.dtypes import NATIVE_BF16, cpu_flags
from textgen.core.loading import ModelLoadError
from textgen.executors.hf import select_executor
from textgen.executors.llama import LlamaExecutor
from textgen.executors.native import kernel


@pytest.mark.parametrize("dtype, pairs", [(torch.float32, 1), (torch.bfloat16, 2)])
def test_pack_lays_out_panels_of_32_transposed_output_rows_with_a_zeroed_tail(dtype, pairs):
    """float32: [panel, input, lane]; bfloat16 pairs consecutive inputs: [panel, input / 2,
    lane, input % 2], the layout of AVX512-BF16's pair dot product."""
    weight = torch.arange(70 * 6, dtype=dtype).reshape(70, 6)  # 2 full panels + 6 rows
    panels = kernel.pack(weight)
    assert panels.shape == (3, 6 // pairs, kernel.PANEL, pairs)
    assert panels.dtype == dtype
    for row in range(70):
        panel, lane = divmod(row, kernel.PANEL)
        assert torch.equal(panels[panel, :, lane].reshape(-1), weight[row])
    assert not panels[2, :, 70 - 64:].any()


# The C forward's paths: this CPU's (AVX-512 where it has it), AVX2's float32 tile (CPUs with
# AVX2 and no AVX-512) and the plain loops of the rest.
TARGETS = ["native"] + (["x86-64-v3", "x86-64-v2"] if platform.machine() == "x86_64" else [])
# bfloat16 weights have a third path: AVX-512 without AVX512-BF16 widens each pair to float32
# (Skylake to Ice Lake), which this CPU runs too where it has AVX-512.
BF16_TARGETS = TARGETS + (["skylake-avx512"] if "avx512f" in cpu_flags() else [])
SHAPES = {  # attention heads / KV heads x head size, and what each covers
    "4/2x16": dict(head_dim=16),
    "4/2x32": dict(head_dim=32),  # attention's weighted sum in registers
    "6/2x64": dict(num_attention_heads=6, num_key_value_heads=2, head_dim=64,  # GQA of 3
                   hidden_size=96),
    "3/1x128": dict(num_attention_heads=3, num_key_value_heads=1, head_dim=128, hidden_size=96),
    # no size a multiple of 32 or 16: the panels' last, partial panel and plain attention
    "odd sizes": dict(vocab_size=509, hidden_size=72, intermediate_size=100, head_dim=18),
}


@needs_cc
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
            assert executor.forward_path == ("c" if kernel_target else "tensor")
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


@needs_cc
@pytest.mark.parametrize("target", BF16_TARGETS)
def test_the_c_forward_over_bfloat16_weights_gives_the_logits_of_those_weights_in_float32(
        target):
    """The bfloat16 build against the float32 tensor forward of the same (rounded) weights:
    the same logits where the inputs stay float32 (the widening paths), and within bfloat16's
    rounding of the inputs where the CPU multiplies bfloat16 pairs natively. Greedy tokens
    through prefill, joins and decode steps then match on both."""
    model, rounded = random_model(LlamaConfig), random_model(LlamaConfig)
    for weight, same in zip(model.parameters(), rounded.parameters()):  # as from_pretrained
        weight.data = weight.data.to(torch.bfloat16)  # loads them: the rotary table's
        same.data = weight.data.float()               # frequencies stay float32
    c_forward = LlamaExecutor(model, 0, CPU, 256, kernel_target=target)
    assert c_forward.forward_path == "c" and c_forward.kv_dtype == torch.float32
    reference = LlamaExecutor(rounded, 0, CPU, 256, kernel_target=None)
    prompts = [[(7 * row + i) % 500 + 3 for i in range(1 + (13 * row) % 45)] for row in range(9)]
    native = target == "native" and bool(cpu_flags() & set(NATIVE_BF16))
    with torch.inference_mode():
        got, expected = c_forward.prefill(prompts), reference.prefill(prompts)
        for _ in range(6):
            if native:  # inputs rounded to bfloat16 (8 bits of mantissa) before each product:
                # within ~1% of the largest logit here
                scale = expected.abs().max()
                torch.testing.assert_close(got / scale, expected / scale, rtol=0, atol=0.02)
            else:
                torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
            tokens = expected.argmax(dim=-1).tolist()
            got, expected = c_forward.decode(tokens), reference.decode(tokens)


def test_pack_int8_quantizes_each_output_row_with_its_own_scale_after_the_panels():
    weight = torch.randn(40, 64, generator=torch.Generator().manual_seed(0))
    weight[3] *= 100  # one row's scale must not coarsen the others
    buffer = kernel.pack_int8(weight)
    panels = buffer[:64 * 64].view(torch.int8).view(2, 16, kernel.PANEL, 4)
    scales = buffer[64 * 64:].view(torch.float32)
    assert scales.shape == (64,) and not scales[40:].any()
    torch.testing.assert_close(scales[:40], weight.abs().amax(dim=1) / 127)
    for row in (0, 3, 39):
        panel, lane = divmod(row, kernel.PANEL)
        restored = panels[panel, :, lane].reshape(-1).float() * scales[row]
        assert (restored - weight[row]).abs().max() <= scales[row] / 2 + 1e-6


# int8 products: AVX512-VNNI's byte quads where the CPU has them, AVX-512 loops without VNNI
# (Skylake), and the generic loops.
INT8_TARGETS = BF16_TARGETS


@needs_cc
@pytest.mark.parametrize("target", INT8_TARGETS)
def test_the_int8_c_forward_stays_close_to_float32_and_decodes_as_it_prefills(target):
    """Quantized weights (a scale per output) times inputs quantized per block of 32: close to
    the float32 forward's logits, with the same next tokens, and a decode step computes what a
    prefill of the same tokens does."""
    reference = LlamaExecutor(random_model(LlamaConfig), 0, CPU, 256, kernel_target=None)
    executor = LlamaExecutor(random_model(LlamaConfig), 0, CPU, 256, kernel_target=target,
                             int8=True)
    assert executor.forward_path == "c" and executor.kernel.bytes_by_dtype()["int8"]
    prompts = [[(7 * row + i) % 500 + 3 for i in range(1 + (13 * row) % 45)] for row in range(9)]
    with torch.inference_mode():
        expected, got = reference.prefill(prompts), executor.prefill(prompts)
        tokens = got.argmax(dim=-1).tolist()
        step = executor.decode(tokens)
        executor.reset()
        whole = executor.prefill([p + [t] for p, t in zip(prompts, tokens)])
    torch.testing.assert_close(whole, step, rtol=1e-5, atol=1e-5)
    # This random model (weights 0.2 wide) magnifies rounding: torch's dynamic int8 is off by
    # up to 13% of the largest logit here (2.8% on average) and picks other tokens for 2 of 9.
    error = (got - expected).abs() / expected.abs().max()
    assert error.max() < 0.1 and error.mean() < 0.02, (error.max(), error.mean())
    assert torch.equal(got.argmax(dim=-1), expected.argmax(dim=-1))


@needs_cc
def test_the_int8_product_is_the_block_quantized_product_on_every_path():
    """The product alone (textgen_product) against the same arithmetic in torch: inputs
    quantized per block of 32 (round half to even, offset by 128), integer sums, each block's
    sum times its scale, then the output's scale. Every path gives the same values: integer
    sums are exact, and the float steps are the same."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn((70, 96), generator=generator)
    x = torch.randn((11, 96), generator=generator) * torch.linspace(0.1, 30, 96)  # outliers
    x[3, 32:64] = 0  # an all-zero block
    buffer = kernel.pack_int8(weight)
    scales = buffer[96 * 96:].view(torch.float32)[:70]
    quantized = torch.round(weight / scales[:, None]).to(torch.int64)
    blocks = x.view(11, 3, 32)
    block_scale = blocks.abs().amax(dim=2) / 127
    block_scale[block_scale == 0] = 1
    xq = torch.round(blocks / block_scale[..., None]).to(torch.int64)
    sums = torch.einsum("rbk,obk->rbo", xq, quantized.view(70, 3, 32)).double()
    expected = ((sums * block_scale.double()[..., None]).sum(dim=1) * scales.double()).float()
    results = [kernel.product(buffer, x, 70, torch.int8, target=target)().clone()
               for target in INT8_TARGETS]
    torch.testing.assert_close(results[0], expected, rtol=1e-5, atol=1e-4)
    for other in results[1:]:
        assert torch.equal(other, results[0])


@needs_cc
def test_int8_needs_input_widths_in_blocks_of_32_and_otherwise_says_so():
    model = random_model(LlamaConfig, **SHAPES["odd sizes"])
    executor = LlamaExecutor(model, 0, CPU, 256, int8=True)
    assert executor.forward_path == "tensor"
    assert "int8 products take input widths that are multiples of 32" in \
        executor.kernel_unavailable


def test_without_a_c_compiler_the_tensor_step_serves_and_the_log_says_why(monkeypatch, caplog):
    monkeypatch.setattr(kernel.shutil, "which", lambda name: None)
    model = random_model(LlamaConfig)
    with caplog.at_level("INFO", logger="textgen"):
        executor = LlamaExecutor(model, 0, CPU, 256)
    assert executor.forward_path == "tensor"
    assert "decode step and prefill in tensor operations: no C compiler" in caplog.text
    expected = [hf_greedy(model, p) for p in PROMPTS + LATE]
    assert executor_greedy(executor, PROMPTS, LATE, model.config.eos_token_id) == expected


@needs_cc
def test_the_forward_path_setting_turns_the_c_forward_off_or_insists_on_it(monkeypatch):
    model = random_model(LlamaConfig)
    assert select_executor("auto", model, 0, CPU, 256, forward_path="tensor").forward_path \
        == "tensor"
    assert select_executor("auto", model, 0, CPU, 256, forward_path="c").forward_path == "c"
    with pytest.raises(ModelLoadError, match="forward_path `c` needs the `llama` executor"):
        select_executor("hf", model, 0, CPU, 256, forward_path="c")
    monkeypatch.setattr(kernel.shutil, "which", lambda name: None)
    with pytest.raises(ModelLoadError,
                       match="forward_path `c` is not available here: no C compiler"):
        select_executor("auto", model, 0, CPU, 256, forward_path="c")


@needs_cc
def test_the_c_forward_refuses_a_token_outside_the_vocabulary_instead_of_reading_past_it():
    model = random_model(LlamaConfig)
    executor = LlamaExecutor(model, 0, CPU, 256)
    with torch.inference_mode():
        with pytest.raises(ValueError, match="outside the model's table"):
            executor.prefill([[5, model.config.vocab_size, 7]])
        executor.prefill([[5, 6, 7]])
        with pytest.raises(ValueError, match="outside the model's tables"):
            executor.decode([model.config.vocab_size])


@needs_cc
def test_the_c_forward_taking_the_weights_leaves_one_packed_copy_and_the_same_tokens():
    """With take_weights (the engine's way) the HF module's projections are emptied as the
    kernel packs them: the process holds the weights once, and the tokens do not change."""
    for tied in (True, False):
        model = random_model(LlamaConfig, tie_word_embeddings=tied)
        expected = [hf_greedy(model, p) for p in PROMPTS + LATE]
        executor = LlamaExecutor(model, 0, CPU, 256, take_weights=True)
        assert executor.forward_path == "c"
        layer = model.model.layers[0]
        for module in (layer.self_attn.q_proj, layer.mlp.down_proj,
                       model.get_output_embeddings()):
            assert module.weight.numel() == 0
        assert (model.get_input_embeddings().weight.numel() == 0) == tied
        assert executor_greedy(executor, PROMPTS, LATE, model.config.eos_token_id) == expected


