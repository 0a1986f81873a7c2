"""Running the model over the batch: the one part of the engine that differs per executor.

Why an interface: the engine (scheduling, sampling, stop strings, detokenising, outputs) is the
same whatever computes the logits, as in vLLM, where the scheduler and output processing sit
apart from the model runner. An executor owns the model and the running rows' key/value cache:
it prefills newcomers into the rows below the running ones, decodes one token for every row,
and forgets the rows that finished. Two exist:

- `HFExecutor` calls the Hugging Face module (any causal LM transformers can load);
- `LlamaExecutor` (llama_executor.py) runs the Llama family's forward from the same weights in
  a few fused tensor operations per layer, and on a CPU its decode step and prefill each as
  one call into C (forward_kernel.c, over float32, bfloat16 or int8 weights): a step costs a
  fraction of the HF modules' Python, which is what bounds a lone stream on a CPU.

`select_executor` picks the lean one where it applies (see `LlamaExecutor.unsupported_reason`)
and says why not otherwise, in the start-up log.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Optional, Protocol, Sequence

import torch

from textgen.adapters.lora import ActiveLora, StepLora, wrap_linears
from textgen.adapters.peft_format import LoraAdapter, base_linears
from textgen.core.dtypes import ProductTimer, best_seconds, cpu_flags
from textgen.core.loading import ModelLoadError, quantize_linear_int8
from textgen.executors.kv_batch import KVBatch, new_cache, prefill_inputs, prefill_positions

log = logging.getLogger("textgen")

INT8_INSTRUCTIONS = "avx512_vnni"  # the C forward's int8 tile (vpdpbusd); plain loops without


class Executor(Protocol):
    """Rows are numbered in cache order: newcomers join below the running rows."""

    name: str
    forward_path: str  # how the forward (decode steps and prefill) runs, for the start-up log
    kv_dtype: torch.dtype  # what its cache holds: the engine's token budget counts its bytes

    def prefill(self, prompts: list[list[int]], every_position: Sequence[bool] = (),
                adapters: Sequence[Optional[LoraAdapter]] = ()) -> torch.Tensor:
        """Run the prompts, add them as new rows; returns their next-token logits [n, vocab].

        A prompt whose `every_position` is set (prompt logprobs) gets the logits after each of
        its tokens instead of the last one only, so the result holds, prompt after prompt, one
        row or len(prompt) rows (kv_batch.prefill_positions). `adapters`: per prompt, the LoRA
        adapter it runs (None: the base model); empty when none does or LoRA is off."""
        ...

    def decode(self, last_tokens: list[int],
               adapters: Sequence[Optional[LoraAdapter]] = ()) -> torch.Tensor:
        """One token per running row (in row order); returns the logits [rows, vocab].
        `adapters`: per row, as in `prefill`."""
        ...

    def fork(self, rows: list[int]) -> None:
        """Add a copy of each of `rows` (its cache so far) as new last rows, in order."""
        ...

    def prepare_adapter(self, adapter: LoraAdapter) -> None:
        """Make what its forward needs of a LoRA adapter as it loads, not in a step."""
        ...

    def drop(self, rows: list[int]) -> list[int]:
        """Forget `rows`; returns the remaining rows' old indices in their new order."""
        ...

    def reset(self) -> None:
        """Forget every row (after a failed step)."""
        ...

    def limit_cache(self, tokens: int) -> None:
        """Bound the cache to `tokens` tokens (KVBatch), the engine's max_batch_total_tokens;
        before the first prefill."""
        ...


class HFExecutor:
    """The Hugging Face module's own forward over the slot cache of `KVBatch`."""

    name = "hf"
    forward_path = "module"

    def __init__(self, model: Any, pad_id: int, device: torch.device,
                 lora: bool = False) -> None:
        """`lora`: wrap the module's linear layers so rows may run adapters
        (adapters.lora.LoraLinear)."""
        self.model = model
        self.kv_dtype = model.dtype
        self._pad_id = pad_id
        self._device = device
        self._kv_tokens: Optional[int] = None
        self._batch = KVBatch()
        self._lora = ActiveLora()
        if lora:
            wrap_linears(model, list(base_linears(model)), self._lora)

    def prefill(self, prompts: list[list[int]], every_position: Sequence[bool] = (),
                adapters: Sequence[Optional[LoraAdapter]] = ()) -> torch.Tensor:
        with self._lora.using(StepLora.of(adapters, self._device) if adapters else None):
            return self._prefill(prompts, every_position)

    def _prefill(self, prompts: list[list[int]], every_position: Sequence[bool]) -> torch.Tensor:
        ids, mask, positions = prefill_inputs(prompts, self._pad_id, self._device)
        # logits_to_keep=1: only the last position's logits are sampled; computing the
        # vocabulary projection for every prompt token would dominate the prefill. With
        # prompt logprobs the module projects every position of the group (it takes one cut for
        # all rows), which the prompts beside one that asks pay for too.
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                         past_key_values=new_cache(), use_cache=True,
                         logits_to_keep=0 if any(every_position) else 1)
        self._batch.join([(layer.keys, layer.values) for layer in out.past_key_values.layers],
                         mask)
        return prefill_positions(out.logits, prompts, every_position)

    def decode(self, last_tokens: list[int],
               adapters: Sequence[Optional[LoraAdapter]] = ()) -> torch.Tensor:
        mask, positions = self._batch.decode_inputs()
        ids = torch.tensor(last_tokens, device=self._device).unsqueeze(1)
        with self._lora.using(StepLora.of(adapters, self._device) if adapters else None):
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                             past_key_values=self._batch.cache, use_cache=True,
                             logits_to_keep=1)
        self._batch.commit_decode()
        return out.logits[:, -1, :]

    def fork(self, rows: list[int]) -> None:
        self._batch.fork(rows)

    def prepare_adapter(self, adapter: LoraAdapter) -> None:
        """Nothing: the wrapped layers use the adapter's matrices as they are."""

    def drop(self, rows: list[int]) -> list[int]:
        return self._batch.drop(rows)

    def reset(self) -> None:
        self._batch = KVBatch(self._kv_tokens)

    def limit_cache(self, tokens: int) -> None:
        self._kv_tokens = tokens
        self.reset()


def select_executor(requested: str, model: Any, pad_id: int, device: torch.device,
                    context_length: int, forward_path: str = "auto",
                    take_weights: bool = False, quantization: str = "none",
                    lora: bool = False) -> Executor:
    """`auto`: the lean Llama executor when the model is one it runs exactly, else HF's.

    `forward_path` (EngineConfig.forward_path): `auto` runs the Llama executor's decode step and
    prefill in C where they compile, `tensor` never does (the switch to turn the native code
    off), `c` fails the load when it cannot. `take_weights`: the C forward may empty the HF
    module's projections as it packs them (LlamaExecutor); the engine passes True.

    `quantization` `int8` on a CPU (the model loaded in float32): the C forward over int8
    panels where it runs; else torch's dynamic int8 modules in the HF module (the tensor
    forward takes no int8, so forward_path `tensor` with int8 fails the load).

    `lora` (LoRA adapters enabled): the Llama executor adds each row's adapter in whichever
    forward it runs (the C forward's add_lora, the tensor forward's adapters/lora.py); the
    HF module gets its linear layers wrapped. int8 weights take none."""
    from textgen.executors.llama import LlamaExecutor

    int8 = quantization == "int8" and device.type == "cpu"
    if lora and quantization != "none":
        raise ModelLoadError(f"LoRA adapters run over float weights; quantization "
                             f"`{quantization}` takes none: unset LLM_QUANTIZATION or serve no "
                             "adapters (LLM_LORA_ADAPTERS, LLM_ENABLE_LORA)")
    if int8 and forward_path == "tensor":
        raise ModelLoadError("quantization `int8` on the CPU runs in the C forward (or, with "
                             "executor `hf`, in torch's int8 modules); the tensor forward "
                             "takes float weights only: use forward_path `auto` or `c`")
    reason: Optional[str] = LlamaExecutor.unsupported_reason(model)
    if requested == "llama" and reason:
        raise ModelLoadError(f"executor `llama` cannot run this model: {reason}; "
                             f"use executor `auto` or `hf`")
    if requested == "hf" or reason:
        if forward_path == "c":
            why = "executor `hf` was asked for" if requested == "hf" else reason
            raise ModelLoadError(f"forward_path `c` needs the `llama` executor, and {why}; "
                                 "use forward_path `auto` or `tensor`")
        if requested == "auto":
            log.info("using the Hugging Face executor: %s", reason)
        return HFExecutor(model, pad_id, device, lora=True) if lora \
            else _hf_executor(model, pad_id, device, int8)
    executor = LlamaExecutor(model, pad_id, device, context_length,
                             kernel_target=None if forward_path == "tensor" else "native",
                             take_weights=take_weights, int8=int8)
    if forward_path == "c" and executor.kernel_unavailable:
        raise ModelLoadError(f"forward_path `c` is not available here: "
                             f"{executor.kernel_unavailable}; use forward_path `auto` or `tensor`")
    if int8 and executor.kernel_unavailable:
        log.info("quantization int8 in torch's int8 modules of the Hugging Face executor: the C "
                 "forward is unavailable (%s)", executor.kernel_unavailable)
        return _hf_executor(model, pad_id, device, int8)
    if int8 and INT8_INSTRUCTIONS not in cpu_flags():
        # Measured on a Zen 3 (AVX2, no VNNI): a 1536x576 int8 product took 0.6 ms for one
        # row and ~20 ms for 32, against float32's AVX2 tile's 0.1 and 1.1 ms
        # (docs/performance.md, AVX2 CPUs).
        log.warning("quantization int8: this CPU has no AVX512-VNNI (`%s` in /proc/cpuinfo), "
                    "so the C forward multiplies int8 in plain loops, several times slower than "
                    "float32 here; unset LLM_QUANTIZATION to serve float32",
                    INT8_INSTRUCTIONS)
    return executor


def _hf_executor(model: Any, pad_id: int, device: torch.device, int8: bool) -> HFExecutor:
    """The HF module's executor, its linear layers quantized to int8 where asked."""
    return HFExecutor(quantize_linear_int8(model) if int8 else model, pad_id, device)


def product_timer(requested: str, forward_path: str, model_config: Any) -> ProductTimer:
    """Times one product (the MLP's gate/up, at most 64 MiB of float32) as the forward that
    `select_executor` will pick runs it: the C forward's panels where it will run, torch's
    linear otherwise. What `dtype` `auto` compares on a CPU (textgen/core/dtypes.py). One
    random matrix serves every timing; each dtype's copy of it is made once."""
    from textgen.executors.llama import LlamaExecutor
    from textgen.executors.native import kernel

    width = model_config.hidden_size
    out = min(2 * getattr(model_config, "intermediate_size", 4 * width), (1 << 24) // width)
    c_forward = requested != "hf" and forward_path != "tensor" \
        and LlamaExecutor.unsupported_config_reason(model_config) is None
    generator = torch.Generator().manual_seed(0)

    @functools.lru_cache(maxsize=None)
    def random_weight() -> torch.Tensor:  # at the first timing: `auto` may decide without any
        return torch.randn((out, width), generator=generator)

    @functools.lru_cache(maxsize=None)
    def weight_as(dtype: torch.dtype, panels: bool) -> torch.Tensor:
        """The random matrix in `dtype`, packed for the C forward or as it is."""
        weight = random_weight()
        return kernel.pack_as(weight, dtype) if panels else weight.to(dtype)

    def seconds(dtype: torch.dtype, rows: int) -> float:
        x = torch.randn((rows, width), generator=generator)
        if c_forward:
            try:
                return best_seconds(kernel.product(weight_as(dtype, True), x, out, dtype,
                                                   torch.get_num_threads()))
            except kernel.KernelUnavailable:
                pass  # the tensor forward will serve: time what it runs
        x, matrix = x.to(dtype), weight_as(dtype, False)
        with torch.inference_mode():
            return best_seconds(lambda: torch.nn.functional.linear(x, matrix))

    return seconds
