#!/usr/bin/env python3
"""Train a LoRA adapter for a base model on one text, with PEFT, and save it as PEFT does.

Why this exists: the adapter tests and benchmarks need real adapters (PEFT's
`adapter_config.json` + `adapter_model.safetensors`, as teams bring them) that change the
model's output measurably, and this machine reaches no model hub. The demo model's two bundled
adapters (demo_model/adapters/) come from this tool, each trained on a different text the
project ships; the real model's adapter is written by the tests with the same tool.

    python -m tools.train_adapter --base demo_model --text demo_model/NOTICE \\
        --out demo_model/adapters/notice
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def train_adapter(base: Path, text: str, out: Path, rank: int = 8,
                  targets: tuple[str, ...] = ALL_LINEAR, steps: int = 120,
                  learning_rate: float = 3e-3, seq_len: int = 64, seed: int = 0,
                  progress: bool = True) -> Path:
    """Fit a rank-`rank` LoRA on `targets` to `text` (next-token loss) and save it in `out`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    ids = torch.tensor(tokenizer.encode(text))
    if ids.numel() < seq_len + 1:
        raise SystemExit(f"the text has {ids.numel()} tokens; it needs at least {seq_len + 1}")
    peft_model = get_peft_model(model, LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=list(targets), lora_dropout=0.0,
        bias="none"))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad],
                                  lr=learning_rate)
    windows = ids.unfold(0, seq_len + 1, max(1, seq_len // 2))
    started = time.monotonic()
    for step in range(steps):
        batch = windows[torch.randint(len(windows), (min(8, len(windows)),))]
        loss = peft_model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if progress and (step % 20 == 0 or step == steps - 1):
            print(f"step {step + 1}/{steps}: loss {loss.item():.3f} "
                  f"({time.monotonic() - started:.0f} s)", file=sys.stderr)
    peft_model.save_pretrained(out)
    (out / "README.md").unlink(missing_ok=True)  # PEFT's model-card template, nothing filled in
    return out


def random_adapter(base: Path, out: Path, rank: int = 16,
                   targets: tuple[str, ...] = ALL_LINEAR, seed: int = 0) -> Path:
    """An untrained adapter with random A and B (PEFT's `init_lora_weights=False`): the same
    shapes and arithmetic as a trained one, for benchmarks that need many."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets),
                                     init_lora_weights=False)).save_pretrained(out)
    (out / "README.md").unlink(missing_ok=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="the base model's directory")
    parser.add_argument("--text", type=Path, required=True, help="a UTF-8 text to fit")
    parser.add_argument("--out", type=Path, required=True, help="where the adapter is saved")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", default=",".join(ALL_LINEAR),
                        help="comma-separated module names (default: every linear layer)")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = train_adapter(args.base, args.text.read_text(encoding="utf-8"), args.out, args.rank,
                        tuple(t for t in args.targets.split(",") if t), args.steps,
                        args.learning_rate, seed=args.seed)
    print(f"adapter saved in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
