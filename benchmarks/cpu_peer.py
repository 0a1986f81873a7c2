#!/usr/bin/env python3
"""Against the CPU peer, in one run: this stack through its gateway, its engine in-process, and
llama.cpp's own server, on the same model and workload, interleaved round by round.

Why a script of its own: `make bench` starts one system after the other, so on this noisy
2-core machine two systems never share a moment. Here the stack (Triton + gateway) and
`llama-server` are started once and stay up (idle while the other is measured), and every
round measures each level on every system, in alternating order; figures are the median over
rounds, ratios taken within each round. The in-process engine runs in this process with both
executors (`llama`: the lean forward the stack uses by default; `hf`: the Hugging Face module,
what the stack used before), so the table also shows what the serving stack costs on top of
its own engine.

  .venv/bin/python benchmarks/cpu_peer.py                   # 3 rounds, c = 1, 8, 32
  .venv/bin/python benchmarks/cpu_peer.py --rounds 5 --concurrency 1,32
  .venv/bin/python benchmarks/cpu_peer.py --model-dir ~/.cache/llm-service/smollm2-135m-instruct \
      --in-process llama --requests-per-client 2     # the real model (`make real-model`)
  ... --format bfloat16      # every system in bfloat16 (llama.cpp on a bf16 GGUF; int8: q8_0)

It also reports each served system's peak memory (RSS) over the run.

Workload: `fixed` (64 prompt + 64 output tokens, ignore_eos, temperature 0.7 seeded).
llama.cpp: built on first use from the llama-cpp-python sdist (benchmarks/llamacpp.py, ~7 min
on 2 cores, cached); where it cannot be built the table leaves it out and says why.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Optional

from benchmarks import engine_only, llamacpp, loadgen, stack, workload as workloads
from benchmarks.median import spread
from benchmarks.memory import PeakMemory, current_rss_mib

HERE = Path(__file__).resolve().parent


SERVED = ("ours", "llamacpp")  # measured over HTTP with the load generator
IN_PROCESS = ("engine", "engine_hf")  # the transformers engine in this process
LABELS = {"ours": "ours (gateway)", "engine": "engine in-process",
          "engine_hf": "engine in-process, HF executor", "llamacpp": "llama.cpp server"}


def measure_served(target: stack.Target, specs: list[workloads.RequestSpec], concurrency: int,
                   max_seconds: float) -> dict[str, Any]:
    result = asyncio.run(loadgen.run_level(
        target.request_url, target.headers, specs, concurrency, max_seconds, 15, target.name,
        "fixed", body=target.body, keep_alive=target.keep_alive))
    stats = result.stats()
    return {"tokens_per_s": stats["output_tokens_per_s"],
            "ttft_p50_ms": (stats["ttft_ms"] or {}).get("p50"),
            "itl_p50_ms": (stats["itl_ms"] or {}).get("p50"),
            "itl_p95_ms": (stats["itl_ms"] or {}).get("p95"), "errors": stats["errors"]}


def measure_in_process(engine: Any, specs: list[workloads.RequestSpec],
                       concurrency: int) -> dict[str, Any]:
    result = engine_only.run(engine, specs, concurrency)
    return {"tokens_per_s": result.tokens_per_s, "ttft_p50_ms": result.ttft_p50_ms,
            "itl_p50_ms": result.itl_p50_ms, "itl_p95_ms": None, "errors": 0}


def main(argv: Optional[list[str]] = None) -> int:
    parser = workloads.rounds_parser(__doc__, requests_per_client=6, max_seconds=30)
    parser.add_argument("--in-process", default="llama,hf",
                        help="executors of the in-process engine to measure ('' for none)")
    parser.add_argument("--format", choices=tuple(llamacpp.FORMATS), default="float32",
                        help="the weights' number format in every system (llama.cpp: the GGUF "
                             "of the same weights)")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    model_dir = args.model_dir.resolve()

    from transformers import AutoTokenizer

    from textgen.core import engine_thread
    from textgen.core.config import EngineConfig
    from textgen.transformers_engine.engine import TransformersEngine

    source = workloads.PromptSource(AutoTokenizer.from_pretrained(model_dir),
                                    (HERE.parent / "demo_model" / "heldout.txt").read_text())
    def specs_for(round_: int, concurrency: int) -> list[workloads.RequestSpec]:
        return workloads.fresh_fixed(source, max(16, args.requests_per_client * concurrency),
                                     round_, concurrency)

    warm_up = workloads.build("fixed", 4, source, 2024)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cpu-peer-") as run_dir, ExitStack() as started:
        targets = {"ours": started.enter_context(stack.triton_stack(
            "ours", Path(run_dir) / "ours", "continuous", model_dir,
            llamacpp.FORMATS[args.format].env))}
        skipped = llamacpp.unavailable()
        if skipped:
            print(f"==> llama.cpp left out: {skipped}", flush=True)
        else:
            targets["llamacpp"] = started.enter_context(
                llamacpp.server(Path(run_dir) / "llamacpp", model_dir, format_=args.format))
        session = engine_thread.session_nice()
        wanted = set(filter(None, args.in_process.split(",")))
        form = llamacpp.FORMATS[args.format]
        engines = {name: TransformersEngine(EngineConfig(
            model_dir=model_dir, executor=executor, dtype=form.dtype,
            quantization=form.quantization))
                   for name, executor in (("engine", "llama"), ("engine_hf", "hf"))
                   if executor in wanted}
        # An engine raises its process's session priority, here this load generator's: put it
        # back, so that the served systems keep a client at the normal priority.
        if session is not None:  # lowering a priority needs no privilege
            Path("/proc/self/autogroup").write_text(str(session))
        for engine in engines.values():
            started.callback(engine.shutdown)
        memory = {name: started.enter_context(PeakMemory(target.processes))
                  for name, target in targets.items()}
        systems = [s for s in (*SERVED, *IN_PROCESS) if s in targets or s in engines]
        for name in systems:  # warm-up
            if name in targets:
                measure_served(targets[name], warm_up, 2, 60)
            else:
                measure_in_process(engines[name], warm_up, 2)
        for round_ in range(args.rounds):
            for concurrency in levels:
                order = systems if round_ % 2 == 0 else list(reversed(systems))
                specs = specs_for(round_, concurrency)
                for name in order:
                    row = (measure_served(targets[name], specs, concurrency, args.max_seconds)
                           if name in targets
                           else measure_in_process(engines[name], specs, concurrency))
                    rows.append({"round": round_, "system": name, "concurrency": concurrency,
                                 **row})
                    print(f"  round {round_ + 1} c={concurrency:<3d} {LABELS[name]:32s} "
                          f"{row['tokens_per_s']:7.0f} tok/s  TTFT p50 {row['ttft_p50_ms']:7.1f}"
                          f" ms  ITL p50 {row['itl_p50_ms'] or float('nan'):5.2f} ms  "
                          f"errors {row['errors'] or 0}", flush=True)
        final_rss = {name: current_rss_mib(target.processes())
                     for name, target in targets.items()}
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print("\n" + table(rows))
    for name, peak in memory.items():
        print(f"peak RSS, {LABELS[name]}: " + ", ".join(
            f"{role} {mib:,.0f} MiB" for role, mib in peak.result()["peak_rss_mib"].items()))
        print(f"RSS at the end, {LABELS[name]}: " + ", ".join(
            f"{role} {mib:,.0f} MiB" for role, mib in final_rss[name].items()))
    return 0


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per level and system, median (min-max) over rounds; ratios within rounds."""
    systems = [s for s in (*SERVED, *IN_PROCESS) if any(r["system"] == s for r in rows)]
    lines = ["| clients | system | tok/s | TTFT p50 (ms) | ITL p50 (ms) | ITL p95 (ms) |",
             "|---:|---|---:|---:|---:|---:|"]
    ratios: list[str] = []
    for concurrency in sorted({r["concurrency"] for r in rows}):
        level = [r for r in rows if r["concurrency"] == concurrency]
        for system in systems:
            mine = [r for r in level if r["system"] == system]
            lines.append(
                f"| {concurrency} | {LABELS[system]} | "
                f"{spread([r['tokens_per_s'] for r in mine], 0)} | "
                f"{spread([r['ttft_p50_ms'] for r in mine if r['ttft_p50_ms']], 1)} | "
                f"{spread([r['itl_p50_ms'] for r in mine if r['itl_p50_ms']], 2)} | "
                f"{spread([r['itl_p95_ms'] for r in mine if r['itl_p95_ms']], 2)} |")
        for mine, theirs in (("ours", "llamacpp"), ("ours", "engine"),
                             ("engine", "engine_hf")):
            per_round = []
            for round_ in sorted({r["round"] for r in level}):
                pair = {r["system"]: r["tokens_per_s"] for r in level if r["round"] == round_}
                if pair.get(mine) and pair.get(theirs):
                    per_round.append(pair[mine] / pair[theirs])
            if per_round:
                ratios.append(f"| {concurrency} | {LABELS[mine]} / {LABELS[theirs]} | "
                              f"{spread(per_round, 2, 'x')} |")
    return "\n".join(lines + ["", "| clients | output tokens/s ratio | median (min-max) |",
                              "|---:|---|---:|"] + ratios)


if __name__ == "__main__":
    sys.exit(main())
