"""Full precision vs 8-bit as the engine serves them, in-process and in the same run: weight
bytes, tokens/s, perplexity.

Both come from the engine's own loading and dispatch (benchmarks/dtype_quality.py,
`load_served`: float32, and `quantization` int8 over it: the C forward's int8 panels where it
runs, torch's dynamic int8 in the HF module elsewhere), so this measures what
`LLM_QUANTIZATION=int8` serves.

  perplexity  exp(mean next-token NLL) over non-overlapping windows of held-out text
              (demo_model/heldout.txt, never seen in training), from the executor's logits
  tokens/s    the executor's greedy decoding, exactly `new_tokens` new tokens, at batch 1 and
              batch 8; the best of `repeats` runs
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import dtype_quality
from benchmarks.memory import weight_bytes

ROOT = Path(__file__).resolve().parent.parent
METHODS = {"c": "int8 weights with a scale per output, inputs quantized per block of 32 "
                "(the C forward's integer products)",
           "module": "torch dynamic int8 quantization of nn.Linear (tied output layer kept in "
                     "float32)"}


def tokens_per_second(executor: Any, prompt_ids: list[int], batch: int, new_tokens: int,
                      repeats: int) -> float:
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        dtype_quality.executor_greedy(executor, [prompt_ids] * batch, new_tokens)
        best = max(best, new_tokens * batch / (time.perf_counter() - start))
    return round(best, 1)


def served_weight_bytes(executor: Any, model: Any) -> dict[str, int]:
    """Bytes of the weights the executor serves from, by dtype: the C forward's (int8 panels
    with their scales counted as int8), else the HF executor's module (int8 modules where it
    quantized them), else the model the tensor forward shares its weights with."""
    kernel = getattr(executor, "kernel", None)
    if kernel is not None:
        return kernel.bytes_by_dtype()
    return weight_bytes(getattr(executor, "model", model))


def compare(model_dir: Path, heldout: Path, max_windows: int = 64, window: int = 256,
            new_tokens: int = 64, repeats: int = 2) -> dict[str, Any]:
    """fp32 vs int8 on the CPU, one after the other in this process."""
    results: dict[str, Any] = {"device": "cpu", "method": {"none": "float32 weights"}}
    ids: list[int] = []
    for mode, format_ in (("none", "float32"), ("int8", "int8")):
        start = time.perf_counter()
        executor, tokenizer, model = dtype_quality.load_served(model_dir, format_)
        load_s = time.perf_counter() - start
        if mode == "int8":
            results["method"]["int8"] = METHODS["c" if executor.forward_path == "c"
                                                else "module"]
        if not ids:
            ids = tokenizer.encode(heldout.read_text())
        prompt = ids[:64]
        by_dtype = served_weight_bytes(executor, model)
        with torch.inference_mode():
            results[mode] = {
                "weight_bytes": by_dtype, "weight_bytes_total": sum(by_dtype.values()),
                "load_s": round(load_s, 2), "forward_path": executor.forward_path,
                "perplexity": {**dtype_quality.perplexity(executor, ids, window, max_windows),
                               "window": window},
                "tokens_per_s_batch1": tokens_per_second(executor, prompt, 1, new_tokens,
                                                         repeats),
                "tokens_per_s_batch8": tokens_per_second(executor, prompt, 8, new_tokens,
                                                         repeats),
            }
        del executor, model
    results["new_tokens"] = new_tokens
    return results
