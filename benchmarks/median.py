#!/usr/bin/env python3
"""The headline table over several `make bench` runs: median, with min and max as the noise.

Why: on a small shared machine one run can be 20% off (static batching especially, whose
throughput depends on how arrivals fall around batch boundaries), so performance claims quote
the median of at least three runs, and the spread shows how far to trust it.

  python benchmarks/median.py                      # the last 3 full runs in benchmarks/results
  python benchmarks/median.py --last 5
  python benchmarks/median.py benchmarks/results/20261126-0920-full ...

It also prints the OpenAI API's cost against generate_stream, level by level, for the runs
that measured the `openai` system.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Optional

RESULTS = Path(__file__).resolve().parent / "results"
ROWS = (("output tokens/s, {tput} clients", "output_tokens_per_s", 0),
        ("TTFT p50 (ms), {ttft} streams", "ttft_p50_ms", 1),
        ("TTFT p95 (ms), {ttft} streams", "ttft_p95_ms", 1))
SYSTEMS = ("ours", "static", "baseline")


def load(run_dirs: list[Path]) -> list[dict[str, Any]]:
    runs = []
    for run_dir in run_dirs:
        path = run_dir / "results.json"
        if not path.is_file():
            raise SystemExit(f"{path} is missing: is {run_dir} a finished `make bench` run?")
        runs.append(json.loads(path.read_text()))
    return runs


def latest_full_runs(count: int, results_dir: Path = RESULTS) -> list[Path]:
    runs = sorted(p for p in results_dir.glob("*-full") if (p / "results.json").is_file())
    if len(runs) < count:
        raise SystemExit(f"found {len(runs)} finished full runs in {results_dir}, need {count}: "
                         f"run `make bench` {count - len(runs)} more time(s)")
    return runs[-count:]


def spread(values: list[Optional[float]], digits: int, unit: str = "") -> str:
    """'median (min-max)' of the values present."""
    present = [v for v in values if v is not None]
    if not present:
        return "n/a"
    fmt = f"{{:,.{digits}f}}{unit}"
    middle = fmt.format(statistics.median(present))
    if min(present) == max(present):
        return middle
    return f"{middle} ({fmt.format(min(present))}-{fmt.format(max(present))})"


def table(runs: list[dict[str, Any]]) -> str:
    """Markdown: each figure's median over the runs, ratios computed per run, then the median."""
    heads = [run["headline"] for run in runs]
    systems = [s for s in SYSTEMS if any(s in h["systems"] for h in heads)]
    others = [s for s in ("static", "baseline") if s in systems and "ours" in systems]
    first = heads[0]
    lines = ["| | " + " | ".join(systems) + "".join(f" | ours/{o}" for o in others) + " |",
             "|---|" + "---:|" * (len(systems) + len(others))]
    for title, key, digits in ROWS:
        cells = [spread([h["systems"].get(s, {}).get(key) for h in heads], digits)
                 for s in systems]
        for other in others:
            ratios = []
            for h in heads:
                ours, theirs = (h["systems"].get(s, {}).get(key) for s in ("ours", other))
                ratios.append(ours / theirs if ours and theirs else None)
            cells.append(spread(ratios, 2, unit="x"))
        name = title.format(tput=first["throughput_concurrency"],
                            ttft=first["ttft_concurrency"])
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def openai_table(runs: list[dict[str, Any]]) -> str:
    """Markdown: the OpenAI path against generate_stream per level, median (min-max) over the
    runs of each run's own ratio and TTFT difference; empty when no run measured it."""
    levels: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for run in runs:
        for row in run["headline"].get("openai_overhead") or []:
            levels.setdefault((row["workload"], row["concurrency"]), []).append(row)
    if not levels:
        return ""
    lines = ["| workload | clients | OpenAI tok/s | generate_stream tok/s | kept | TTFT p50 "
             "OpenAI (ms) | TTFT p50 generate_stream (ms) | added (ms) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (workload, clients), rows in sorted(levels.items()):
        def cells(key: str, digits: int, unit: str = "") -> str:
            return spread([r[key] for r in rows], digits, unit)
        lines.append(f"| {workload} | {clients} | {cells('tokens_per_s', 0)} | "
                     f"{cells('generate_stream_tokens_per_s', 0)} | "
                     f"{cells('tokens_ratio', 2, 'x')} | {cells('ttft_p50_ms', 1)} | "
                     f"{cells('generate_stream_ttft_p50_ms', 1)} | "
                     f"{cells('ttft_p50_added_ms', 1)} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path, help="result folders (default: the "
                                                           "last --last full runs)")
    parser.add_argument("--last", type=int, default=3, help="how many recent full runs")
    args = parser.parse_args(argv)
    run_dirs = args.runs or latest_full_runs(args.last)
    runs = load(run_dirs)
    print(f"Median (min-max) of {len(runs)} runs: " + ", ".join(
        f"{p.name} (commit {r['meta'].get('commit', '?')})" for p, r in zip(run_dirs, runs)))
    print(f"Machine: {runs[-1]['meta']['machine_line']}\n")
    print(table(runs))
    overhead = openai_table(runs)
    if overhead:
        print("\nThe OpenAI API (/v1/chat/completions) against generate_stream:\n")
        print(overhead)
    return 0


if __name__ == "__main__":
    sys.exit(main())
