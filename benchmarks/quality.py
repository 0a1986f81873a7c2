"""Full precision vs 8-bit, in-process and in the same run: weight bytes, tokens/s, perplexity.

Both models come from the service's own loading path (`textgen.loading.load_model` with
`quantization` none or int8), so this measures what `LLM_QUANTIZATION=int8` serves.

  perplexity  exp(mean next-token NLL) over non-overlapping windows of held-out text
              (demo_model/heldout.txt, never seen in training)
  tokens/s    HF generate, greedy, exactly `new_tokens` new tokens, at batch 1 and batch 8;
              the best of `repeats` runs
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.memory import weight_bytes

ROOT = Path(__file__).resolve().parent.parent


def perplexity(model: Any, ids: list[int], window: int, max_windows: int) -> dict[str, Any]:
    count = min(max_windows, len(ids) // window)
    batch = torch.tensor([ids[i * window:(i + 1) * window] for i in range(count)])
    nll, tokens = 0.0, 0
    with torch.inference_mode():
        for chunk in batch.split(8):
            logits = model(input_ids=chunk).logits[:, :-1].float()
            targets = chunk[:, 1:]
            nll += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                reduction="sum").item()
            tokens += targets.numel()
    return {"perplexity": round(math.exp(nll / tokens), 3), "tokens": tokens,
            "windows": count, "window": window}


def tokens_per_second(model: Any, tokenizer: Any, prompt_ids: list[int], batch: int,
                      new_tokens: int, repeats: int) -> float:
    ids = torch.tensor([prompt_ids] * batch)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    best = 0.0
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=False, pad_token_id=pad)
            elapsed = time.perf_counter() - start
            produced = (out.shape[1] - ids.shape[1]) * batch
            best = max(best, produced / elapsed)
    return round(best, 1)


def compare(model_dir: Path, heldout: Path, max_windows: int = 64, window: int = 256,
            new_tokens: int = 64, repeats: int = 2) -> dict[str, Any]:
    """fp32 vs int8 on the CPU, one after the other in this process."""
    from textgen.core.loading import load_model

    cpu = torch.device("cpu")
    results: dict[str, Any] = {"device": "cpu", "method": {
        "none": "float32 weights", "int8": "torch dynamic int8 quantization of nn.Linear "
                                           "(tied output layer kept in float32)"}}
    ids: list[int] = []
    for mode in ("none", "int8"):
        start = time.perf_counter()
        model, tokenizer = load_model(model_dir, cpu, torch.float32, quantization=mode)
        load_s = time.perf_counter() - start
        if not ids:
            ids = tokenizer.encode(heldout.read_text())
        prompt = ids[:64]
        by_dtype = weight_bytes(model)
        results[mode] = {
            "weight_bytes": by_dtype, "weight_bytes_total": sum(by_dtype.values()),
            "load_s": round(load_s, 2),
            "perplexity": perplexity(model, ids, window, max_windows),
            "tokens_per_s_batch1": tokens_per_second(model, tokenizer, prompt, 1, new_tokens,
                                                     repeats),
            "tokens_per_s_batch8": tokens_per_second(model, tokenizer, prompt, 8, new_tokens,
                                                     repeats),
        }
        del model
    results["new_tokens"] = new_tokens
    return results
