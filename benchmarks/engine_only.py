#!/usr/bin/env python3
"""The engine alone, in-process: continuous vs static scheduling on `make bench`'s workload.

Why: through the gateway every token also costs Triton, the stream model, Envoy and the
client, all on the same two cores, which blurs what the scheduler and the cache do. This
drives an engine (the transformers engine unless `--engine vllm`) directly with N
closed-loop clients (each submits its next request when the last one finishes) on the same
seeded workload, one policy after the other, and prints output tokens/s and TTFT for each,
median of `--repeats`; or, with `--controls` / `--logprobs`, the same requests with and
without those fields, passes alternating on one engine.

  .venv/bin/python -m benchmarks.engine_only                  # mixed, 32 clients, 192 requests
  .venv/bin/python -m benchmarks.engine_only --clients 8 --workload fixed
  .venv/bin/python -m benchmarks.engine_only --logprobs --workload fixed   # what logprobs cost
  .venv-vllm/bin/python -m benchmarks.engine_only --engine vllm --logprobs --workload fixed
  .venv/bin/python -m benchmarks.engine_only --choices 4 --workload fixed --requests 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from benchmarks import workload
from textgen.core.config import EngineConfig
from textgen.core.cpus import engine_threads
from textgen.core.engine import GenerationEngine
from textgen.core.outputs import EngineObserver, SequenceOutput
from textgen.core.validation import GenerationRequest
from textgen.engines import create_engine

ROOT = Path(__file__).resolve().parent.parent



class _Client:
    """An OutputSink that records when the first text and the end arrive."""

    def __init__(self) -> None:
        self.sent = time.monotonic()
        self.first: float | None = None
        self.done = threading.Event()
        self.tokens = 0
        self.total = 0.0

    def on_text(self, delta: str, logprobs: Sequence[Any] = (), index: int = 0) -> None:
        if self.first is None:
            self.first = time.monotonic() - self.sent

    def on_finish(self, output: SequenceOutput) -> None:
        self.tokens = output.completion_tokens
        self.total = time.monotonic() - self.sent
        self.done.set()

    @property
    def itl(self) -> float | None:
        """As the load generator defines it: (end-to-end - TTFT) / (tokens - 1)."""
        if self.first is None or self.tokens < 2:
            return None
        return (self.total - self.first) / (self.tokens - 1)

    def is_cancelled(self) -> bool:
        return False


@dataclass(frozen=True)
class Pass:
    tokens_per_s: float
    ttft_p50_ms: float
    itl_p50_ms: float | None


# What `--controls` adds to every request: each penalty, and a bias on a few tokens.
CONTROLS: dict[str, Any] = {"presence_penalty": 0.5, "frequency_penalty": 0.5,
                            "repetition_penalty": 1.1,
                            "logit_bias": ((3, -5.0), (17, 2.0), (99, -100.0), (250, 1.0))}
# What `--logprobs` adds: each token's logprob and its top 5.
LOGPROBS: dict[str, Any] = {"logprobs": 5}


def run(engine: GenerationEngine, specs: list[workload.RequestSpec], clients: int,
        controls: Optional[dict[str, Any]] = None, adapters: Sequence[str] = ()) -> Pass:
    """One closed-loop pass over `specs` with `clients` clients; `controls`: extra fields
    (sampling controls, logprobs) for every request; `adapters`: LoRA adapters the requests
    take in turn (none: the base model)."""
    pending = iter(enumerate(specs))
    lock = threading.Lock()
    finished: list[_Client] = []

    def client() -> None:
        while True:
            with lock:
                i, spec = next(pending, (0, None))
            if spec is None:
                return
            sink = _Client()
            adapter = adapters[i % len(adapters)] if adapters else ""
            engine.submit(GenerationRequest(prompt=spec.prompt, max_tokens=spec.max_tokens,
                                            temperature=workload.TEMPERATURE, seed=spec.seed,
                                            ignore_eos=True, adapter=adapter,
                                            **(controls or {})), sink)
            sink.done.wait()
            finished.append(sink)

    start = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    ttft = statistics.median(s.first for s in finished if s.first is not None) * 1e3
    itls = [s.itl for s in finished if s.itl is not None]
    return Pass(sum(s.tokens for s in finished) / elapsed, ttft,
                statistics.median(itls) * 1e3 if itls else None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=192)
    parser.add_argument("--workload", choices=("fixed", "mixed"), default="mixed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "demo_model")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--max-prefill-tokens", type=int,
                        default=EngineConfig.max_prefill_tokens,
                        help="prompt tokens prefilled per step (LLM_MAX_PREFILL_TOKENS)")
    extra = parser.add_mutually_exclusive_group()
    extra.add_argument("--controls", action="store_true",
                       help="instead of continuous vs static: the same requests with and "
                            "without penalties and a logit_bias, alternating passes")
    extra.add_argument("--logprobs", action="store_true",
                       help="the same, with and without logprobs (top 5)")
    extra.add_argument("--choices", type=int, metavar="N",
                       help="instead: the time until every sequence of one request for N "
                            "sequences (`n`) has its first token, against one sequence's "
                            "time to first token, requests alone, alternating")
    parser.add_argument("--cpu-threads", type=int, default=None,
                        help="the engine's threads (LLM_CPU_THREADS; default: its own rule)")
    parser.add_argument("--engine", choices=("transformers", "vllm"), default="transformers",
                        help="with --controls, --logprobs or --choices: which engine (vllm: "
                             "run this with .venv-vllm/bin/python)")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    source = workload.PromptSource(AutoTokenizer.from_pretrained(args.model_dir),
                                   (ROOT / "demo_model" / "heldout.txt").read_text())
    specs = workload.build(args.workload, args.requests, source, args.seed)
    print(f"{args.workload} workload, {args.requests} requests, {args.clients} clients, "
          f"median of {args.repeats}", flush=True)
    if args.controls or args.logprobs:
        return compare_fields(args, specs, CONTROLS if args.controls else LOGPROBS)
    if args.choices:
        return compare_choices(args, specs)
    for policy in ("continuous", "static"):
        engine = create_engine(EngineConfig(model_dir=args.model_dir, scheduling=policy,
                                            max_prefill_tokens=args.max_prefill_tokens),
                               EngineObserver())
        try:
            run(engine, specs[:4], 4)  # warm-up
            passes = [run(engine, specs, args.clients) for _ in range(args.repeats)]
        finally:
            engine.shutdown()
        tps = [p.tokens_per_s for p in passes]
        print(f"  {policy:<10} {statistics.median(tps):7,.0f} tokens/s "
              f"(min {min(tps):,.0f}, max {max(tps):,.0f})   TTFT p50 "
              f"{statistics.median(p.ttft_p50_ms for p in passes):6.0f} ms", flush=True)
    return 0


def compare_fields(args: argparse.Namespace, specs: list[workload.RequestSpec],
                   fields: dict[str, Any]) -> int:
    """Tokens/s with and without `fields` on every request, passes alternating on one
    engine."""
    engine = create_engine(EngineConfig(model_dir=args.model_dir, engine=args.engine,
                                        max_prefill_tokens=args.max_prefill_tokens,
                                        cpu_threads=args.cpu_threads), EngineObserver())
    try:
        run(engine, specs[:4], 4)  # warm-up
        plain, controlled = [], []
        for _ in range(args.repeats):
            plain.append(run(engine, specs, args.clients).tokens_per_s)
            controlled.append(run(engine, specs, args.clients, fields).tokens_per_s)
        threads = engine_threads(args.cpu_threads).count  # the rule both engines follow
    finally:
        engine.shutdown()
    ratios = [c / p for c, p in zip(controlled, plain)]
    print(f"  engine {args.engine}, {threads} engine thread(s); {fields}", flush=True)
    print(f"  plain      {statistics.median(plain):7,.0f} tokens/s (min {min(plain):,.0f}, "
          f"max {max(plain):,.0f})", flush=True)
    print(f"  with them  {statistics.median(controlled):7,.0f} tokens/s (min "
          f"{min(controlled):,.0f}, max {max(controlled):,.0f}); per-pass ratio median "
          f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})", flush=True)
    return 0


class _FirstTokens:
    """An OutputSink for a request of n sequences: when each had its first text, and the end."""

    def __init__(self, n: int) -> None:
        self.sent = time.monotonic()
        self.first: dict[int, float] = {}
        self._open = n
        self.done = threading.Event()

    def on_text(self, delta: str, logprobs: Sequence[Any] = (), index: int = 0) -> None:
        self.first.setdefault(index, time.monotonic() - self.sent)

    def on_finish(self, output: SequenceOutput) -> None:
        self._open -= 1
        if not self._open:
            self.done.set()

    def is_cancelled(self) -> bool:
        return False


def compare_choices(args: argparse.Namespace, specs: list[workload.RequestSpec]) -> int:
    """One request at a time, n = 1 then n = --choices, over the workload's prompts: the time
    until the last of the n sequences has its first token, against one sequence's TTFT."""
    engine = create_engine(EngineConfig(model_dir=args.model_dir, engine=args.engine,
                                        max_prefill_tokens=args.max_prefill_tokens,
                                        cpu_threads=args.cpu_threads), EngineObserver())

    def ttft(spec: workload.RequestSpec, n: int) -> float:
        sink = _FirstTokens(n)
        engine.submit(GenerationRequest(prompt=spec.prompt, max_tokens=8, n=n,
                                        temperature=workload.TEMPERATURE, seed=spec.seed,
                                        ignore_eos=True), sink)
        sink.done.wait()
        return max(sink.first.values()) * 1e3

    try:
        for spec in specs[:3]:  # warm-up
            ttft(spec, args.choices)
        one, many = [], []
        for _ in range(args.repeats):
            for spec in specs:
                one.append(ttft(spec, 1))
                many.append(ttft(spec, args.choices))
    finally:
        engine.shutdown()
    ratios = [m / o for m, o in zip(many, one)]
    print(f"  engine {args.engine}, {engine_threads(args.cpu_threads).count} engine "
          f"thread(s); {len(one)} requests of each, alone", flush=True)
    print(f"  n=1          TTFT p50 {statistics.median(one):7.1f} ms", flush=True)
    print(f"  n={args.choices:<3}        every first token p50 {statistics.median(many):7.1f} ms"
          f"; per-request ratio median {statistics.median(ratios):.3f} "
          f"({min(ratios):.3f}-{max(ratios):.3f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
