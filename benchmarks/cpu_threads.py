#!/usr/bin/env python3
"""The engine in-process against llama.cpp's `llama-batched-bench`: same weights, same threads.

Why: through the stack, a second engine thread on this 2-core machine measures its contention
with the load generator, not the engine. In-process, the transformers engine
(`TransformersEngine`, default dispatch) and llama.cpp's own batch benchmark each get the
same thread count, the same weights in the same format (`--formats`: float32 against an f32
GGUF, bfloat16 against bf16, our int8 against q8_0) and the same work: B sequences of a
P-token prompt and G new tokens (ignore_eos), all submitted at once, as
`llama-batched-bench -npp P -ntg G -npl B` runs them.
On a machine with more cores, run it unchanged with `--threads 1,2,4,8,...`.

Figures per (threads, B), median (min-max) of `--rounds` alternating rounds:
  output tok/s   B*G / the whole run's time (prefill included), both systems;
  decode tok/s   llama.cpp's S_TG (B*G / its text-generation time), and ours measured the same
                 way: B*(G-1) / (last token - first token), since prefill is a separate phase;
  TTFT p50       ours only (batched-bench reports the prompt phase as a whole: T_PP).
It also prints the CPU's model and features and each system's peak memory (RSS).

  .venv/bin/python benchmarks/cpu_threads.py                     # real model, threads 1,2
  .venv/bin/python benchmarks/cpu_threads.py --threads 1,2,4 --batches 1,8,32 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from benchmarks import llamacpp
from tools import real_model

ROOT = Path(__file__).resolve().parent.parent


RESULTS = ROOT / "benchmarks" / "results"


def cpu_description() -> str:
    """The CPU's model and the features that decide which kernels run."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", info)
    flags = set(re.search(r"flags\s*:\s*(.*)", info).group(1).split()) if "flags" in info else set()
    features = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16",
                            "amx_int8") if f in flags]
    return (f"{model.group(1).strip() if model else platform.processor()}, "
            f"{os.cpu_count()} CPUs, {' '.join(features) or 'no AVX-512'}")


@dataclass
class _Sink:
    """Records when the first text and the end arrive for one sequence."""

    sent: float = field(default_factory=time.monotonic)
    first: Optional[float] = None
    last: Optional[float] = None
    tokens: int = 0
    done: threading.Event = field(default_factory=threading.Event)

    def on_text(self, delta: str, logprobs: Sequence[Any] = (), index: int = 0) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = now

    def on_finish(self, output: Any) -> None:
        self.last = time.monotonic()
        self.tokens = output.completion_tokens
        self.done.set()

    def is_cancelled(self) -> bool:
        return False


def ours(engine: Any, prompt: str, batch: int, new_tokens: int) -> dict[str, float]:
    """`batch` sequences submitted at once; the figures described in the module docstring."""
    from textgen.core.validation import GenerationRequest

    sinks = [_Sink() for _ in range(batch)]
    start = time.monotonic()
    for sink in sinks:
        sink.sent = start
        engine.submit(GenerationRequest(prompt=prompt, max_tokens=new_tokens, ignore_eos=True),
                      sink)
    for sink in sinks:
        sink.done.wait()
    end = max(s.last for s in sinks)
    tokens = sum(s.tokens for s in sinks)
    first = max(s.first for s in sinks)  # decode from the moment every sequence is running
    return {"output_tok_s": tokens / (end - start),
            "decode_tok_s": batch * (new_tokens - 1) / (end - first),
            "ttft_p50_ms": statistics.median(s.first - start for s in sinks) * 1e3}


def peak_rss_mib(pid: int = 0) -> float:
    """VmHWM of a process (this one by default): its peak resident memory since exec, so a
    child forked from this large process is not charged with our pages."""
    status = Path(f"/proc/{pid or 'self'}/status").read_text()
    return int(re.search(r"VmHWM:\s*(\d+) kB", status).group(1)) / 1024


def current_rss_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\s*(\d+) kB", status).group(1)) / 1024


def llama(binary: Path, gguf: Path, threads: int, prompt_tokens: int, new_tokens: int,
          batches: list[int], flags: Sequence[str] = ()) -> tuple[dict[int, dict[str, float]],
                                                                   float]:
    """One `llama-batched-bench` run over every batch size: its table parsed, and its peak
    RSS in MiB (read while it runs)."""
    context = max(batches) * (prompt_tokens + new_tokens) + 64
    command = [str(binary), "-m", str(gguf), "-c", str(context), "-b", "2048", "-ub", "512",
               "-npp", str(prompt_tokens), "-ntg", str(new_tokens),
               "-npl", ",".join(map(str, batches)), "-t", str(threads), "-tb", str(threads),
               *flags]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True)
    peak = 0.0
    while process.poll() is None:
        try:
            peak = max(peak, peak_rss_mib(process.pid))
        except (OSError, AttributeError):
            pass
        time.sleep(0.1)
    stdout = process.stdout.read() if process.stdout else ""
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode})")
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[0].isdigit():
            pp, tg, b, _, _, _, _, s_tg, total_s, _ = cells
            rows[int(b)] = {"output_tok_s": int(b) * int(tg) / float(total_s),
                            "decode_tok_s": float(s_tg)}
    return rows, peak


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):,.1f} ({min(values):,.1f}-{max(values):,.1f})"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="a Llama-family HF directory (default: the real model, "
                             "`make real-model`)")
    parser.add_argument("--threads", default="1,2", help="thread counts, e.g. 1,2,4")
    parser.add_argument("--batches", default="1,8,32", help="sequences at once, e.g. 1,8,32")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--formats", default=",".join(llamacpp.FORMATS),
                        help="number formats, each against llama.cpp's GGUF of the same weights "
                             "(float32: f32, bfloat16: bf16, int8: q8_0)")
    args = parser.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    model_dir = args.model_dir or real_model.build(real_model.default_dir())

    import torch
    from transformers import AutoTokenizer

    from textgen.core.config import EngineConfig
    from textgen.transformers_engine.engine import TransformersEngine

    log = RESULTS / "cpu_threads.build.log"
    binary = llamacpp.ensure_binary("llama-batched-bench", log)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer.encode((ROOT / "demo_model" / "heldout.txt").read_text())[:args.prompt_tokens]
    prompt = tokenizer.decode(ids)
    cpu = cpu_description()
    print(f"CPU: {cpu}\nmodel: {model_dir}\n"
          f"workload: B x ({len(tokenizer.encode(prompt))} prompt + {args.new_tokens} new "
          f"tokens, ignore_eos), all at once; median (min-max) of {args.rounds} rounds",
          flush=True)
    results: dict[str, Any] = {"cpu": cpu, "model": str(model_dir), "rows": []}
    for name, count in [(f, t) for f in args.formats.split(",") for t in threads]:
        form = llamacpp.FORMATS[name]
        gguf = llamacpp.ensure_gguf(model_dir, log, name)
        engine = TransformersEngine(EngineConfig(
            model_dir=model_dir, cpu_threads=count, max_num_seqs=max(batches),
            dtype=form.dtype, quantization=form.quantization,
            max_batch_total_tokens=max(batches) * (args.prompt_tokens + args.new_tokens + 64)))
        forward = engine.describe()["forward_path"]
        loaded_rss = current_rss_mib()
        rss_llama = 0.0
        figures: dict[tuple[str, int], list[dict[str, float]]] = {}
        try:
            ours(engine, prompt, 2, 4)  # warm-up
            for _ in range(args.rounds):
                for batch in batches:
                    figures.setdefault(("ours", batch), []).append(
                        ours(engine, prompt, batch, args.new_tokens))
                rows, peak = llama(binary, gguf, count, args.prompt_tokens, args.new_tokens,
                                   batches, form.flags)
                rss_llama = max(rss_llama, peak)
                for batch, row in rows.items():
                    figures.setdefault(("llama.cpp", batch), []).append(row)
            rss_ours = current_rss_mib()
        finally:
            engine.shutdown()
        print(f"\n{name}, ours on the {forward} forward, against "
              f"{gguf.name}; {count} thread(s) (torch reports {torch.get_num_threads()}); "
              f"memory: this "
              f"process {loaded_rss:,.0f} MiB once loaded, {rss_ours:,.0f} MiB after the "
              f"rounds (peak {peak_rss_mib():,.0f} MiB, the HF load included); "
              f"llama-batched-bench peak {rss_llama:,.0f} MiB")
        print("| B | ours output tok/s | llama.cpp output tok/s | ratio | ours decode tok/s "
              "| llama.cpp decode tok/s | ratio | ours TTFT p50 ms |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for batch in batches:
            mine, theirs = figures[("ours", batch)], figures[("llama.cpp", batch)]
            ratio = {k: [m[k] / t[k] for m, t in zip(mine, theirs)]
                     for k in ("output_tok_s", "decode_tok_s")}
            print(f"| {batch} | {summary([m['output_tok_s'] for m in mine])} "
                  f"| {summary([t['output_tok_s'] for t in theirs])} "
                  f"| {statistics.median(ratio['output_tok_s']):.2f}x "
                  f"| {summary([m['decode_tok_s'] for m in mine])} "
                  f"| {summary([t['decode_tok_s'] for t in theirs])} "
                  f"| {statistics.median(ratio['decode_tok_s']):.2f}x "
                  f"| {summary([m['ttft_p50_ms'] for m in mine])} |", flush=True)
            results["rows"].append({"format": name, "threads": count, "batch": batch,
                                    "ours": mine, "llama.cpp": theirs})
        results.setdefault("rss_mib", {})[f"{name} {count}"] = {
            "ours_loaded": loaded_rss, "ours_after": rss_ours, "llama.cpp_peak": rss_llama}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"cpu_threads-{time.strftime('%Y%m%d-%H%M')}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
