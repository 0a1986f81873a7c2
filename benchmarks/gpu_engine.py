#!/usr/bin/env python3
"""Both engines in-process on a ~1B-parameter Llama, against bare vLLM and HF `generate`.

Why: the demo model is tiny, so the 2-core figures say little about the engines on real
hardware. This script needs no download: it builds a Llama-3.2-1B-shaped model with random
weights (bf16 on CUDA), sends the same requests (prompt and output lengths drawn with a fixed
seed, `ignore_eos` so lengths are exact), one at a time (batch 1) and all at once (`--requests`,
256 by default), to

  1. the `transformers` engine (`textgen.engines`, iteration-level scheduling),
  2. the `vllm` engine (vLLM's engine core behind the same interface, as the `llm` model runs it),
  3. bare vLLM: its `LLMEngine` stepped directly, nothing of this service around it, and
  4. HF `generate` on static batches of `--batch` requests (left padding, greedy),

and prints output tokens/s and TTFT p50 for each, measured in the same run. vLLM's parts run
where vLLM is installed (the GPU image, or `.venv-vllm/bin/python` here) and are skipped with
a message elsewhere. `--tiny` runs a 2-layer model so the script can be checked on a CPU.

  python benchmarks/gpu_engine.py                 # on a GPU machine with vLLM installed
  .venv-vllm/bin/python benchmarks/gpu_engine.py --tiny --requests 8
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from textgen.core.config import EngineConfig, Limits
from textgen.core.outputs import Collector, EngineObserver
from textgen.core.validation import GenerationRequest
from textgen.engines import create_engine

ROOT = Path(__file__).resolve().parent.parent


def build_model(out: Path, tiny: bool) -> None:
    """A Llama with random weights, saved with the demo model's tokenizer (bf16, built on the
    GPU where there is one: a 1.2B model initialised on the CPU takes most of a minute)."""
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "demo_model")
    size = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4) if tiny else dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=2048,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **size)
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    with torch.device("cuda" if cuda else "cpu"):
        model = LlamaForCausalLM(config)
    (model.to(torch.bfloat16) if cuda else model).save_pretrained(out)
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


Figures = dict[str, float]


def _figures(tokens: int, elapsed: float, ttfts: list[float]) -> Figures:
    return {"output_tokens_per_s": round(tokens / elapsed, 1),
            "ttft_p50_ms": round(1000 * statistics.median(ttfts), 1)}


def run_engine(name: str, model_dir: Path, jobs: list[tuple[list[int], int]], max_seqs: int,
               ) -> dict[str, Figures]:
    """One of this service's engines: the jobs one at a time, then all at once."""
    engine = create_engine(EngineConfig(
        model_dir=model_dir, engine=name, max_num_seqs=max_seqs,
        max_batch_total_tokens=max_seqs * 1100, max_queue_size=100000, queue_timeout_s=3600,
        limits=Limits(max_prompt_tokens=1024, max_new_tokens=1024)), EngineObserver())
    decode = AutoTokenizer.from_pretrained(model_dir).decode

    def run(group: list[tuple[list[int], int]]) -> tuple[int, list[float]]:
        sinks = [Collector() for _ in group]
        for (ids, new), sink in zip(group, sinks):
            engine.submit(GenerationRequest(prompt=decode(ids), max_tokens=new,
                                            ignore_eos=True), sink)
        outputs = [sink.wait()[0] for sink in sinks]
        return (sum(o.completion_tokens for o in outputs),
                [o.first_token_seconds for o in outputs])

    try:
        run([([300, 301, 302], 4)])  # warm-up
        return _levels(run, jobs)
    finally:
        engine.shutdown()


def _levels(run, jobs: list[tuple[list[int], int]]) -> dict[str, Figures]:
    """batch_1: the first 16 jobs one after another; all_at_once: every job together."""
    results = {}
    for level, groups in (("batch_1", [[job] for job in jobs[:16]]), ("all_at_once", [jobs])):
        tokens, ttfts = 0, []
        start = time.perf_counter()
        for group in groups:
            produced, firsts = run(group)
            tokens += produced
            ttfts += firsts
        results[level] = _figures(tokens, time.perf_counter() - start, ttfts)
    return results


def run_bare_vllm(model_dir: Path, jobs: list[tuple[list[int], int]], max_seqs: int,
                  ) -> dict[str, Figures]:
    """vLLM's own engine stepped directly, in the dtype vLLM picks (bf16 on CUDA)."""
    from vllm import SamplingParams
    from vllm.engine.arg_utils import EngineArgs
    from vllm.inputs import TokensPrompt
    from vllm.v1.engine.llm_engine import LLMEngine

    engine = LLMEngine.from_engine_args(EngineArgs(
        model=str(model_dir), max_model_len=2048, max_num_seqs=max_seqs, seed=0,
        disable_log_stats=True), enable_multiprocessing=False)
    counter = iter(range(10**9))

    def run(group: list[tuple[list[int], int]]) -> tuple[int, list[float]]:
        sent = time.perf_counter()
        first: dict[str, float] = {}
        for ids, new in group:
            engine.add_request(str(next(counter)), TokensPrompt(prompt_token_ids=ids),
                               SamplingParams(max_tokens=new, ignore_eos=True, temperature=0))
        tokens = 0
        while engine.has_unfinished_requests():
            for out in engine.step():
                first.setdefault(out.request_id, time.perf_counter() - sent)
                if out.finished:
                    tokens += len(out.outputs[0].token_ids)
        return tokens, list(first.values())

    run([([300, 301, 302], 4)])  # warm-up
    return _levels(run, jobs)


def run_static(model_dir: Path, jobs: list[tuple[list[int], int]], batch: int) -> float:
    from transformers import AutoModelForCausalLM

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
    parser.add_argument("--requests", type=int, default=256,
                        help="requests sent all at once [%(default)s]")
    parser.add_argument("--batch", type=int, default=32, help="static batch size [%(default)s]")
    parser.add_argument("--max-seqs", type=int, default=256,
                        help="engines' max_num_seqs [%(default)s]")
    parser.add_argument("--tiny", action="store_true", help="2-layer model for a CPU check")
    parser.add_argument("--hf-requests", type=int, default=None,
                        help="HF generate runs the first N requests only [all]: static batches "
                             "take long, and its rate is what is compared")
    parser.add_argument("--skip-vllm", action="store_true",
                        help="leave out vLLM's engine and bare vLLM even where installed")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result: dict[str, object] = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "requests": args.requests}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "llama"
        print(f"building {'a tiny' if args.tiny else 'a 1.2B'} Llama with random weights",
              flush=True)
        build_model(model_dir, args.tiny)
        jobs = workload(args.requests, args.seed, AutoTokenizer.from_pretrained(model_dir))
        systems = {"transformers_engine": lambda: run_engine("transformers", model_dir, jobs,
                                                             args.max_seqs)}
        if args.skip_vllm:
            print("vLLM's parts are skipped (--skip-vllm)", flush=True)
        elif importlib.util.find_spec("vllm"):
            systems["vllm_engine"] = lambda: run_engine("vllm", model_dir, jobs, args.max_seqs)
            systems["bare_vllm"] = lambda: run_bare_vllm(model_dir, jobs, args.max_seqs)
        else:
            print("vLLM is not installed here: its engine and bare vLLM are skipped "
                  "(`make vllm`, then run this script with .venv-vllm/bin/python)", flush=True)
        for name, measure in systems.items():
            print(f"==> {name}", flush=True)
            result[name] = measure()
        print("==> hf_generate", flush=True)
        result[f"hf_generate_static_batch_{args.batch}_output_tokens_per_s"] = round(
            run_static(model_dir, jobs[:args.hf_requests], args.batch), 1)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
