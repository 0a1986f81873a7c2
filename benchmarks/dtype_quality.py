#!/usr/bin/env python3
"""What each served number format costs in quality, on the forward that serves it: held-out
perplexity, and greedy agreement with float32 Hugging Face `generate`.

Why its own measure: a format is only worth its speed if the answers stay the same. Each of
float32, bfloat16 (`dtype`) and int8 (`quantization`, over float32) is loaded as the engine
loads it (`load_model`, then `select_executor`'s default dispatch: the C forward where it
runs), and scored through that executor, not through the HF module:

  perplexity   exp(mean next-token NLL) over non-overlapping windows of held-out text
               (demo_model/heldout.txt, never seen in training), from the executor's prefill
               with the logits of every position (what prompt logprobs use)
  vs float32   the perplexity's change against the float32 row
  greedy       of `--prompts` prompts from the same text, `--new-tokens` greedy tokens each
               through the executor, against float32 HF `generate`: the share of prompts whose
               tokens are identical, and the mean share of tokens before the first difference

  .venv/bin/python -m benchmarks.dtype_quality                    # the real model
  .venv/bin/python -m benchmarks.dtype_quality --model-dir demo_model --formats float32,int8
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

ROOT = Path(__file__).resolve().parent.parent
HELDOUT = ROOT / "demo_model" / "heldout.txt"
CPU = torch.device("cpu")


FORMATS = ("float32", "bfloat16", "int8")


def load_served(model_dir: Path, format_: str) -> tuple[Any, Any, Any]:
    """(executor, tokenizer, HF model) as the transformers engine loads them in `format_`
    (FORMATS); the C forward empties the model's projections as it packs them."""
    from textgen.core.dtypes import NAMES
    from textgen.core.loading import load_model
    from textgen.executors.hf import select_executor

    quantization = "int8" if format_ == "int8" else "none"
    model, tokenizer = load_model(model_dir, CPU, NAMES.get(format_, torch.float32), quantization)
    context = int(model.config.max_position_embeddings)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return select_executor("auto", model, pad, CPU, context, take_weights=True,
                           quantization=quantization), tokenizer, model


def perplexity(executor: Any, ids: list[int], window: int, max_windows: int) -> dict[str, Any]:
    """Over `max_windows` windows of `window` tokens, scored one at a time (the executor's
    logits of every position)."""
    count = min(max_windows, len(ids) // window)
    nll, tokens = 0.0, 0
    with torch.inference_mode():
        for i in range(count):
            chunk = ids[i * window:(i + 1) * window]
            logits = executor.prefill([chunk], every_position=[True]).float()
            executor.reset()
            nll += torch.nn.functional.cross_entropy(
                logits[:-1], torch.tensor(chunk[1:]), reduction="sum").item()
            tokens += len(chunk) - 1
    return {"perplexity": math.exp(nll / tokens), "tokens": tokens, "windows": count}


def executor_greedy(executor: Any, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Greedy tokens of all prompts decoded together, as the engine batches them."""
    with torch.inference_mode():
        tokens = executor.prefill(prompts).argmax(dim=-1).tolist()
        out = [[t] for t in tokens]
        for _ in range(new_tokens - 1):
            tokens = executor.decode(tokens).argmax(dim=-1).tolist()
            for row, token in zip(out, tokens):
                row.append(token)
    executor.reset()
    return out


def hf_greedy(model_dir: Path, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """float32 HF `generate`, one prompt at a time: the reference."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        return [model.generate(torch.tensor([p]), max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, do_sample=False,
                               pad_token_id=model.config.eos_token_id)[0, len(p):].tolist()
                for p in prompts]


def agreement(got: list[list[int]], expected: list[list[int]]) -> dict[str, float]:
    """Identical sequences, and the mean share of tokens before the first difference."""
    def prefix(a: list[int], b: list[int]) -> int:
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    return {"identical": sum(a == b for a, b in zip(got, expected)) / len(expected),
            "prefix_share": sum(prefix(a, b) / len(b) for a, b in zip(got, expected))
            / len(expected)}


def measure(model_dir: Path, formats: list[str], window: int = 256, max_windows: int = 16,
            prompts: int = 8, new_tokens: int = 32, prompt_tokens: int = 24) -> dict[str, Any]:
    """Every format's perplexity and greedy agreement (module docstring), float32 first."""
    rows: dict[str, Any] = {}
    reference: Optional[list[list[int]]] = None
    for name in formats:
        started = time.perf_counter()
        executor, tokenizer, _ = load_served(model_dir, name)
        ids = tokenizer.encode(HELDOUT.read_text())
        starts = range(0, prompts * 97, 97)  # prompts from spread-out places in the text
        chosen = [ids[s:s + prompt_tokens] for s in starts]
        if reference is None:
            reference = hf_greedy(model_dir, chosen, new_tokens)
        rows[name] = {"forward_path": executor.forward_path,
                      **perplexity(executor, ids, window, max_windows),
                      **agreement(executor_greedy(executor, chosen, new_tokens), reference),
                      "seconds": time.perf_counter() - started}
        del executor
    base = rows.get("float32", {}).get("perplexity")
    for row in rows.values():
        row["vs_float32"] = row["perplexity"] / base - 1 if base else None
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    from benchmarks.cpu_threads import cpu_description
    from tools import real_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="an HF directory (default: the real model, `make real-model`)")
    parser.add_argument("--formats", default=",".join(FORMATS),
                        help=f"a subset of {','.join(FORMATS)}, float32 first")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    model_dir = args.model_dir or real_model.build(real_model.default_dir())
    rows = measure(model_dir, args.formats.split(","), args.window, args.windows, args.prompts,
                   args.new_tokens)
    print(f"CPU: {cpu_description()}; {torch.get_num_threads()} threads\nmodel: {model_dir}")
    print("| format | forward | perplexity | vs float32 | greedy identical | greedy prefix |")
    print("|---|---|---:|---:|---:|---:|")
    for name, row in rows.items():
        change = "" if row["vs_float32"] is None else f"{100 * row['vs_float32']:+.2f}%"
        print(f"| {name} | {row['forward_path']} | {row['perplexity']:.3f} | {change} "
              f"| {100 * row['identical']:.0f}% | {100 * row['prefix_share']:.0f}% |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
