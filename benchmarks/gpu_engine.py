#!/usr/bin/env python3
"""The engine in-process on a ~1B-parameter Llama vs HF `generate` with a static batch.

Why: the demo model is tiny, so the 2-core figures say little about the engine on real
hardware. This script needs no download: it builds a Llama-3.2-1B-shaped model with random
weights (bf16 on CUDA), sends the same requests (prompt and output lengths drawn with a fixed
seed, `ignore_eos` so lengths are exact) to

  1. `textgen.transformers_engine.TransformersEngine` (iteration-level scheduling, all requests submitted at once), and
  2. HF `generate` on static batches of `--batch` requests (left padding, greedy),

and prints output tokens/s for both, measured in the same run. `--tiny` runs a 2-layer model
so the script can be checked on a CPU in seconds.

  python benchmarks/gpu_engine.py                 # on a GPU machine
  python benchmarks/gpu_engine.py --tiny --requests 8
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from textgen.config import EngineConfig, Limits
from textgen.transformers_engine import TransformersEngine
from textgen.outputs import SequenceOutput
from textgen.validation import GenerationRequest

ROOT = Path(__file__).resolve().parent.parent


def build_model(out: Path, tiny: bool) -> None:
    """A Llama with random weights, saved with the demo model's tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ROOT / "demo_model")
    size = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4) if tiny else dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=2048,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **size)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def workload(n: int, seed: int, tokenizer: object) -> list[tuple[list[int], int]]:
    """(prompt ids, new tokens): heavy-tailed lengths, fixed seed."""
    rng = random.Random(seed)
    vocab = [i for i in range(200, 4000)]
    jobs = []
    for _ in range(n):
        prompt = min(512, int(rng.lognormvariate(4.2, 0.6)))  # median ~67 tokens
        new = min(512, int(rng.lognormvariate(4.5, 0.7)))  # median ~90 tokens
        jobs.append(([rng.choice(vocab) for _ in range(max(4, prompt))], max(4, new)))
    return jobs


class _Done:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.output: SequenceOutput | None = None

    def on_text(self, delta: str) -> None:
        pass

    def on_finish(self, output: SequenceOutput) -> None:
        self.output = output
        self.event.set()

    def is_cancelled(self) -> bool:
        return False


def run_engine(model_dir: Path, jobs: list[tuple[list[int], int]], max_seqs: int) -> float:
    engine = TransformersEngine(EngineConfig(model_dir=model_dir, max_num_seqs=max_seqs,
                                 max_batch_total_tokens=max_seqs * 1100, max_queue_size=100000,
                                 queue_timeout_s=3600,
                                 limits=Limits(max_prompt_tokens=1024, max_new_tokens=1024)))
    decode = engine.tokenizer.decode
    try:
        warm = _Done()
        engine.submit(GenerationRequest(prompt="warm up", max_tokens=4), warm)
        warm.event.wait()
        sinks = [_Done() for _ in jobs]
        start = time.perf_counter()
        for (ids, new), sink in zip(jobs, sinks):
            engine.submit(GenerationRequest(prompt=decode(ids), max_tokens=new,
                                            ignore_eos=True), sink)
        for sink in sinks:
            sink.event.wait()
        elapsed = time.perf_counter() - start
        return sum(s.output.completion_tokens for s in sinks if s.output) / elapsed
    finally:
        engine.shutdown()


def run_static(model_dir: Path, jobs: list[tuple[list[int], int]], batch: int) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    produced = 0
    start = time.perf_counter()
    for first in range(0, len(jobs), batch):
        group = jobs[first:first + batch]
        width = max(len(ids) for ids, _ in group)
        ids = torch.full((len(group), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (prompt, _) in enumerate(group):
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        longest = max(new for _, new in group)
        with torch.inference_mode():
            model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                           max_new_tokens=longest, min_new_tokens=longest, do_sample=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        produced += sum(new for _, new in group)  # tokens anyone asked for
    return produced / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32, help="static batch size [%(default)s]")
    parser.add_argument("--max-seqs", type=int, default=64,
                        help="engine's max_num_seqs [%(default)s]")
    parser.add_argument("--tiny", action="store_true", help="2-layer model for a CPU check")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "llama"
        print(f"building {'a tiny' if args.tiny else 'a 1.2B'} Llama with random weights",
              flush=True)
        build_model(model_dir, args.tiny)
        from transformers import AutoTokenizer
        jobs = workload(args.requests, args.seed, AutoTokenizer.from_pretrained(model_dir))
        engine_tps = run_engine(model_dir, jobs, args.max_seqs)
        static_tps = run_static(model_dir, jobs, args.batch)
    result = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "requests": args.requests, "engine_output_tokens_per_s": round(engine_tps, 1),
              f"hf_generate_static_batch_{args.batch}_output_tokens_per_s": round(static_tps, 1),
              "ratio": round(engine_tps / static_tps, 2)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
