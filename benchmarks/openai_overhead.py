#!/usr/bin/env python3
"""What the OpenAI API costs against generate_stream, measured on ONE stack, interleaved.

Why a script of its own: `make bench` starts a fresh stack per system, so two systems never
share a moment of this noisy 2-core machine. Here one Triton + OpenAI frontend + gateway
serves both paths, and each round runs the same level on both, in alternating order; the
figure quoted is the median over rounds of each round's own ratio (tokens/s kept) and
difference (TTFT p50 added).

  .venv/bin/python benchmarks/openai_overhead.py                  # 3 rounds, c = 1, 8, 32
  .venv/bin/python benchmarks/openai_overhead.py --rounds 5 --concurrency 32

Workload: `fixed` (64 prompt + 64 output tokens, ignore_eos); the chat template adds a few
prompt tokens on the OpenAI path (`User: `, `Assistant: `).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from benchmarks import loadgen, stack, workload as workloads

HERE = Path(__file__).resolve().parent



def main(argv: Optional[list[str]] = None) -> int:
    args = workloads.rounds_parser(__doc__, requests_per_client=8,
                                   max_seconds=40).parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    source = workloads.PromptSource(tokenizer, (args.model_dir / "heldout.txt").read_text())
    specs = workloads.build("fixed", max(levels) * args.requests_per_client, source, 2024)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="openai-overhead-") as run_dir, \
            stack.triton_stack("openai", Path(run_dir), "continuous", args.model_dir.resolve(),
                               openai=True) as target:
        model = args.model_dir.name
        routes = {"generate_stream": (stack.STREAM_PATH, {"X-API-Key": target.api_key},
                                      workloads.RequestSpec.body),
                  "openai": (stack.CHAT_PATH, target.headers,
                             lambda spec: spec.chat_body(model))}
        for name, (path, headers, body) in routes.items():  # warm both paths up
            asyncio.run(loadgen.run_level(target.url + path, headers, specs[:4], 2, 60, 30,
                                          name, "warm-up", body=body))
        for round_ in range(args.rounds):
            for concurrency in levels:
                order = list(routes) if round_ % 2 == 0 else list(reversed(routes))
                for name in order:
                    path, headers, body = routes[name]
                    count = max(16, args.requests_per_client * concurrency)
                    result = asyncio.run(loadgen.run_level(
                        target.url + path, headers, specs[:count], concurrency,
                        args.max_seconds, 15, name, "fixed", body=body))
                    stats = result.stats()
                    rows.append({"round": round_, "api": name, "concurrency": concurrency,
                                 "tokens_per_s": stats["output_tokens_per_s"],
                                 "ttft_p50_ms": (stats["ttft_ms"] or {}).get("p50"),
                                 "itl_p50_ms": (stats["itl_ms"] or {}).get("p50"),
                                 "errors": stats["errors"]})
                    print(f"  round {round_ + 1} c={concurrency:<3d} {name:16s} "
                          f"{stats['output_tokens_per_s']:7.0f} tok/s  TTFT p50 "
                          f"{rows[-1]['ttft_p50_ms']:7.1f} ms  errors {stats['errors'] or 0}",
                          flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print("\n" + table(rows))
    return 0


def table(rows: list[dict[str, Any]]) -> str:
    """Median (min-max) over rounds, ratios and differences taken within each round."""
    def spread(values: list[float], digits: int, unit: str = "") -> str:
        fmt = f"{{:,.{digits}f}}{unit}"
        return (f"{fmt.format(statistics.median(values))} "
                f"({fmt.format(min(values))}-{fmt.format(max(values))})")

    lines = ["| clients | generate_stream tok/s | OpenAI tok/s | kept | TTFT p50 generate_stream "
             "| TTFT p50 OpenAI | added |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for concurrency in sorted({r["concurrency"] for r in rows}):
        pairs = []
        for round_ in sorted({r["round"] for r in rows}):
            by_api = {r["api"]: r for r in rows
                      if r["round"] == round_ and r["concurrency"] == concurrency}
            if len(by_api) == 2:
                pairs.append((by_api["generate_stream"], by_api["openai"]))
        if not pairs:
            continue
        lines.append(
            f"| {concurrency} | {spread([g['tokens_per_s'] for g, _ in pairs], 0)} | "
            f"{spread([o['tokens_per_s'] for _, o in pairs], 0)} | "
            f"{spread([o['tokens_per_s'] / g['tokens_per_s'] for g, o in pairs], 2, 'x')} | "
            f"{spread([g['ttft_p50_ms'] for g, _ in pairs], 1)} | "
            f"{spread([o['ttft_p50_ms'] for _, o in pairs], 1)} | "
            f"{spread([o['ttft_p50_ms'] - g['ttft_p50_ms'] for g, o in pairs], 1, ' ms')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
