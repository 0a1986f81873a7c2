#!/usr/bin/env python3
"""LoRA adapters in the shared batch: what serving them costs, in-process (make bench-adapters).

32 closed-loop clients on the fixed workload (64 prompt + 64 output tokens, ignore_eos), the
requests spread round-robin over 0, 1, 4 and 16 distinct adapters (rank 16 on every linear
layer of each decoder layer, random weights: the arithmetic of a trained one), against the
base model alone as the service serves it by default (LoRA off: the C forward where it
builds), and as it serves it with LoRA on but no adapter named (the tensor forward). Passes
alternate, median of `--repeats`. Also the memory each resident adapter takes (its weights,
and the process's RSS before and after loading the 16), and how long a load stalls streams
running beside it (the longest gap between tokens that overlaps a load, against the median).

  .venv/bin/python -m benchmarks.adapters                             # the demo model
  .venv/bin/python -m benchmarks.adapters --model-dir ~/.cache/llm-service/smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from benchmarks import workload
from benchmarks.engine_only import Pass, run
from benchmarks.memory import current_rss_mib
from textgen.core.config import EngineConfig
from textgen.core.validation import GenerationRequest
from textgen.transformers_engine.engine import TransformersEngine
from tools.train_adapter import ALL_LINEAR, random_adapter

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path.home() / ".cache" / "llm-service" / "bench-adapters"
SPREADS = (0, 1, 4, 16)


def adapters_for(model_dir: Path, count: int, rank: int) -> dict[str, Path]:
    """`count` random rank-`rank` adapters for the model, written once (tools/train_adapter)."""
    out = CACHE / f"{model_dir.name}-r{rank}"
    made = {}
    for i in range(count):
        path = out / f"a{i}"
        if not (path / "adapter_model.safetensors").exists():
            random_adapter(model_dir, path, rank, ALL_LINEAR, seed=i)
        made[f"a{i}"] = path
    return made


class _Gaps:
    """An OutputSink recording when each piece of text arrives."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.done = threading.Event()

    def on_text(self, delta: str, logprobs: Any = (), index: int = 0) -> None:
        self.times.append(time.monotonic())

    def on_finish(self, output: Any) -> None:
        self.done.set()

    def is_cancelled(self) -> bool:
        return False


def load_stall(engine: TransformersEngine, adapters: dict[str, Path], streams: int = 8,
               loads: int = 8) -> tuple[float, float]:
    """Streams running on an adapter while other adapters are loaded (as /v1/load_lora_adapter
    loads them): the median gap between a stream's tokens, the longest gap that overlaps a
    load, and the longest that does not, in ms. Every token is its own piece (the engine's
    stream interval is 0)."""
    assert engine.adapters is not None
    sinks = [_Gaps() for _ in range(streams)]
    names = list(adapters)
    for sink in sinks:
        engine.submit(GenerationRequest(prompt="The list", max_tokens=300, ignore_eos=True,
                                        adapter=names[0]), sink)
    while min(len(sink.times) for sink in sinks) < 10:  # every stream is decoding
        time.sleep(0.001)
    windows = []
    for i in range(loads):
        name = names[1 + i % (len(names) - 1)]
        began = time.monotonic()
        engine.adapters.load(name, adapters[name])
        windows.append((began, time.monotonic()))
    for sink in sinks:
        sink.done.wait()
    assert windows[-1][1] < min(sink.times[-1] for sink in sinks), \
        "the streams ended before the loads did: make them longer"
    gaps = [(b - a, a, b) for sink in sinks for a, b in zip(sink.times, sink.times[1:])]
    overlaps = [any(a < end and b > start for start, end in windows) for _, a, b in gaps]
    during = [gap for (gap, _, _), hit in zip(gaps, overlaps) if hit]
    outside = [gap for (gap, _, _), hit in zip(gaps, overlaps) if not hit]
    return (statistics.median(g for g, _, _ in gaps) * 1e3, max(during, default=0.0) * 1e3,
            max(outside, default=0.0) * 1e3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "demo_model")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()

    model_dir = args.model_dir.expanduser().resolve()
    adapters = adapters_for(model_dir, max(SPREADS), args.rank)
    config = EngineConfig(model_dir=model_dir, dtype="float32", max_num_seqs=args.clients)
    base = TransformersEngine(config)
    rss = current_rss_mib({"engine": os.getpid()})["engine"]
    lora = TransformersEngine(EngineConfig(
        model_dir=model_dir, dtype="float32", max_num_seqs=args.clients, enable_lora=True,
        max_loras=max(SPREADS), max_lora_rank=args.rank))
    before = current_rss_mib({"engine": os.getpid()})["engine"]
    assert lora.adapters is not None
    sizes = [lora.adapters.load(name, path).nbytes for name, path in adapters.items()]
    after = current_rss_mib({"engine": os.getpid()})["engine"]
    per_adapter = statistics.mean(sizes) / 2**20
    source = workload.PromptSource(AutoTokenizer.from_pretrained(model_dir),
                                   (ROOT / "demo_model" / "heldout.txt").read_text())
    specs = workload.build("fixed", args.requests, source, args.seed)
    configs: dict[str, tuple[Any, tuple[str, ...]]] = {
        "base, LoRA off (default)": (base, ()),
        "LoRA on, 0 adapters": (lora, ())}
    for spread in SPREADS[1:]:
        configs[f"LoRA on, {spread} adapter{'s' if spread > 1 else ''}"] = (
            lora, tuple(list(adapters)[:spread]))
    passes: dict[str, list[Pass]] = {name: [] for name in configs}
    run(base, specs[:args.clients], args.clients)  # warm-up
    run(lora, specs[:args.clients], args.clients, adapters=tuple(adapters))
    for repeat in range(args.repeats):
        for name, (engine, names) in configs.items():
            passes[name].append(run(engine, specs, args.clients, adapters=names))
            print(f"  pass {repeat + 1}: {name}: {passes[name][-1].tokens_per_s:.1f} tok/s",
                  file=sys.stderr, flush=True)
    threads = torch.get_num_threads()
    reference = statistics.median(p.tokens_per_s for p in passes["base, LoRA off (default)"])
    print(f"\n{model_dir.name}, {args.clients} clients x fixed {workload.FIXED_PROMPT_TOKENS}+"
          f"{workload.FIXED_OUTPUT_TOKENS} tokens, rank {args.rank} on {', '.join(ALL_LINEAR)}; "
          f"{threads} engine threads; median of {args.repeats}; base forward "
          f"{base.executor.forward_path}, with LoRA {lora.executor.forward_path}\n")
    print("| configuration | output tok/s | vs base (LoRA off) | TTFT p50 ms |")
    print("|---|---:|---:|---:|")
    for name, runs in passes.items():
        rate = statistics.median(p.tokens_per_s for p in runs)
        print(f"| {name} | {rate:.1f} | {rate / reference:.2f}x | "
              f"{statistics.median(p.ttft_p50_ms for p in runs):.0f} |")
    print(f"\nper resident adapter: {per_adapter:.2f} MiB of weights; process RSS "
          f"{before:.0f} -> {after:.0f} MiB loading {len(adapters)} "
          f"({(after - before) / len(adapters):.2f} MiB each); base engine alone {rss:.0f} MiB")
    lora.shutdown()
    base.shutdown()
    streaming = TransformersEngine(EngineConfig(
        model_dir=model_dir, dtype="float32", enable_lora=True, max_loras=max(SPREADS),
        max_lora_rank=args.rank, stream_interval_ms=0,
        lora_adapters=((next(iter(adapters)), adapters[next(iter(adapters))]),)))
    step, worst, elsewhere = load_stall(streaming, adapters)
    print(f"loading adapters while 8 streams run: median gap between tokens {step:.1f} ms; "
          f"longest gap overlapping a load {worst:.1f} ms ({worst / step:.1f} steps), "
          f"longest gap elsewhere in the same streams {elsewhere:.1f} ms")
    streaming.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
