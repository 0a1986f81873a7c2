#!/usr/bin/env python3
"""`make bench`: how much one replica serves, where latency goes, and what it costs in memory.

Runs, in one go and on the same workloads:
  1. 8-bit vs full precision in-process: weight bytes, tokens/s, perplexity on held-out text
  2. ours      Triton (continuous batching) behind the Envoy gateway: the load generator's
               concurrency sweep over SSE, then perf_analyzer over HTTP and gRPC
  3. static    the same Triton with LLM_SCHEDULING=static, behind a gateway
  4. baseline  the naive FastAPI server (one model.generate per request), direct
  5. openai    ours through the OpenAI-compatible API (/v1/chat/completions, streamed, with
               usage): what the OpenAI path costs next to generate_stream
  6. llamacpp  (full run, or --systems) llama.cpp's own server on the same model, built from
               the llama-cpp-python sdist's sources on first use (cached): the CPU peer
  7. vllm-engine  (full run, or --systems) ours with LLM_ENGINE=vllm through the OpenAI API
  8. vllm      (full run, or --systems) vLLM's own OpenAI server on the same model: the peer
               a user would pick instead (both need .venv-vllm, `make vllm`; skipped without)
with peak RSS sampled for every process it started, and writes raw JSON/CSV, PNG plots and a
Markdown summary under benchmarks/results/<time>-<mode>/ (`latest` links to the last run).

Modes: default (full, about 10 minutes on 2 cores), --quick (about 90 s), --smoke (seconds of
load, for the test suite; its numbers mean nothing). It starts what it needs on free loopback
ports and stops it on exit; --url/--api-key measure a running gateway as `ours` instead.

Examples:
  make bench                     # full run
  make bench-quick               # about 90 s
  .venv/bin/python benchmarks/bench.py --quick --systems ours,baseline --workloads mixed
  .venv/bin/python benchmarks/bench.py --url http://127.0.0.1:8080 --api-key "$KEY" \\
      --systems ours --skip-quality
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

from benchmarks import (aiperf_run, llamacpp, loadgen, memory, perf_analyzer, report, stack,
                        workload as workloads)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


SYSTEMS = ("ours", "static", "baseline", "int8", "openai", "llamacpp", "vllm-engine", "vllm")
WORKLOADS = ("fixed", "mixed")


@dataclass(frozen=True)
class Plan:
    """What one mode runs; every level is bounded in requests and in seconds."""

    mode: str
    # system -> workload -> concurrency levels
    levels: dict[str, dict[str, list[int]]]
    requests_per_client: int
    min_requests: int
    max_requests: int
    max_seconds: float
    grace_s: float
    perf_levels: list[int]
    perf_interval_ms: int  # 0: each level is a fixed number of requests instead of windows
    quality_windows: int
    quality_repeats: int
    quality_new_tokens: int = 64
    headline_workload: str = "mixed"
    headline_concurrency: int = 32
    ttft_concurrency: int = 8
    # perf_analyzer runs: unary `llm` over HTTP and gRPC, `llm_stream` over gRPC streaming
    protocols: list[str] = field(default_factory=lambda: ["http", "grpc", "grpc-stream"])

    def requests_for(self, concurrency: int) -> int:
        return min(self.max_requests, max(self.min_requests,
                                          self.requests_per_client * concurrency))


PLANS = {
    "full": Plan(
        mode="full",
        levels={"ours": {"fixed": [1, 4, 8, 16, 32], "mixed": [1, 8, 16, 32]},
                "static": {"fixed": [1, 8, 32], "mixed": [1, 8, 16, 32]},
                "baseline": {"fixed": [1, 32], "mixed": [1, 8, 32]},
                "int8": {"mixed": [8, 32]},
                "openai": {"fixed": [1, 8, 32], "mixed": [8, 32]},
                "llamacpp": {"fixed": [1, 8, 32], "mixed": [8, 32]},
                "vllm-engine": {"fixed": [1, 8, 32]},
                "vllm": {"fixed": [1, 8, 32]}},
        requests_per_client=8, min_requests=16, max_requests=256, max_seconds=40, grace_s=15,
        perf_levels=[1, 4, 16], perf_interval_ms=3000, quality_windows=64, quality_repeats=3),
    "quick": Plan(
        mode="quick",
        levels={"ours": {"fixed": [1, 32], "mixed": [8, 32]},
                "static": {"mixed": [8, 32]},
                "baseline": {"mixed": [8, 32]},
                "openai": {"fixed": [1, 32], "mixed": [8, 32]}},
        requests_per_client=2, min_requests=8, max_requests=64, max_seconds=6, grace_s=10,
        perf_levels=[4], perf_interval_ms=0, quality_windows=12, quality_repeats=1),
    "smoke": Plan(
        mode="smoke",
        levels={"ours": {"fixed": [1, 2], "mixed": [2]},
                "static": {"mixed": [2]},
                "baseline": {"mixed": [2]},
                "openai": {"fixed": [2]}},
        # grace_s: time for the last requests to finish. A smoke run checks the harness, not
        # speed; the naive baseline's third mixed request did not finish within 5 s on a
        # slower 2-core CPU (Zen 3) under the test suite's load.
        requests_per_client=2, min_requests=3, max_requests=4, max_seconds=5, grace_s=30,
        perf_levels=[1], perf_interval_ms=0, quality_windows=2, quality_repeats=1,
        quality_new_tokens=8,
        headline_concurrency=2, ttft_concurrency=2),
}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="about 90 s on 2 cores")
    mode.add_argument("--smoke", action="store_true",
                      help="a few requests per level: checks the harness, not the server")
    parser.add_argument("--systems",
                        help="comma-separated subset of ours,static,baseline,int8,openai,"
                             "llamacpp (default: all in the full run; quick and smoke runs "
                             "leave out int8 and llamacpp)")
    parser.add_argument("--format", choices=tuple(llamacpp.FORMATS), default="float32",
                        help="the weights' number format in our stacks and llama.cpp's GGUF, "
                             "the same in both (vLLM's server runs float32); default float32")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help="comma-separated subset of fixed,mixed (default: both)")
    parser.add_argument("--concurrency", help="override every system's levels, e.g. 1,8,32")
    parser.add_argument("--max-requests", type=int, help="override the requests bound a level")
    parser.add_argument("--max-seconds", type=float, help="override the time bound a level")
    parser.add_argument("--url", help="measure this running gateway as `ours` (with --api-key)")
    parser.add_argument("--api-key", default=os.environ.get("LLM_API_KEY", ""),
                        help="API key for --url (default: $LLM_API_KEY); use a benchmark-tier key")
    parser.add_argument("--model-dir", type=Path,
                        default=Path(os.environ.get("LLM_MODEL_DIR", ROOT / "demo_model")),
                        help="model directory for the servers the benchmark starts and for "
                             "the prompts' tokenizer (default: $LLM_MODEL_DIR or demo_model)")
    parser.add_argument("--heldout", type=Path, default=ROOT / "demo_model" / "heldout.txt",
                        help="held-out text for prompts and perplexity")
    parser.add_argument("--seed", type=int, default=2024, help="workload seed (default 2024)")
    parser.add_argument("--skip-perf-analyzer", action="store_true")
    parser.add_argument("--skip-quality", action="store_true",
                        help="skip the in-process float32 vs int8 comparison")
    parser.add_argument("--results-dir", type=Path,
                        help="where to write (default benchmarks/results/<time>-<mode>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.systems is not None:
        args.systems = _subset(parser, args.systems, SYSTEMS, "--systems")
    args.workloads = _subset(parser, args.workloads, WORKLOADS, "--workloads")
    if args.url and not args.api_key:
        parser.error("--url needs --api-key (or $LLM_API_KEY): the gateway requires a key")
    return args


def _subset(parser: argparse.ArgumentParser, raw: str, allowed: tuple[str, ...],
            flag: str) -> list[str]:
    chosen = [x.strip() for x in raw.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in allowed]
    if unknown or not chosen:
        parser.error(f"{flag}: choose from {', '.join(allowed)}; got {raw!r}")
    return [x for x in allowed if x in chosen]


def make_plan(args: argparse.Namespace) -> Plan:
    plan = PLANS["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.systems is None:
        args.systems = [s for s in SYSTEMS if s in plan.levels]
    levels = {s: {w: list(levels) for w, levels in plan.levels.get(s, {"mixed": [8, 32]}).items()
                  if w in args.workloads} for s in args.systems}
    if args.concurrency:
        chosen = sorted({int(x) for x in args.concurrency.split(",")})
        levels = {s: {w: chosen for w in args.workloads} for s in args.systems}
    plan = replace(plan, levels=levels)
    if args.max_requests:
        plan = replace(plan, max_requests=args.max_requests,
                       min_requests=min(plan.min_requests, args.max_requests))
    if args.max_seconds:
        plan = replace(plan, max_seconds=args.max_seconds)
    all_levels = sorted({c for s in levels.values() for ls in s.values() for c in ls})
    if all_levels and plan.headline_concurrency not in all_levels:
        plan = replace(plan, headline_concurrency=all_levels[-1])
    if all_levels and plan.ttft_concurrency not in all_levels:
        plan = replace(plan, ttft_concurrency=min(all_levels, key=lambda c: abs(c - 8)))
    if plan.headline_workload not in args.workloads:
        plan = replace(plan, headline_workload=args.workloads[0])
    return plan


# ---- environment facts ----------------------------------------------------------------

def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cores": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    try:
        info["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                     capture_output=True, text=True, timeout=5,
                                     check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["gpu"] = None
    import torch
    import transformers
    info["torch"], info["transformers"] = torch.__version__, transformers.__version__
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def machine_line(info: dict[str, Any]) -> str:
    return (f"{info.get('cpu', '?')}, {info['cores']} cores, {info.get('memory_gib', '?')} GiB"
            f"{', GPU ' + info['gpu'] if info.get('gpu') else ', no GPU'}; torch "
            f"{info['torch']}, transformers {info['transformers']}; load average (1/5/15 min) "
            f"at start {info.get('load_average', '?')}, at the end "
            f"{info.get('load_average_end', '?')}")


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=5,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


# ---- running ---------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace, plan: Plan, out: Path) -> None:
        self.args, self.plan, self.out = args, plan, out
        self.loadgen_rows: list[dict[str, Any]] = []
        self.request_rows: list[dict[str, Any]] = []
        self.systems: dict[str, Any] = {}
        self.perf: list[dict[str, Any]] = []
        self.aiperf: dict[str, Any] = {}
        self.specs: dict[str, list[workloads.RequestSpec]] = {}
        self.phases: dict[str, float] = {}

    def log(self, message: str) -> None:
        print(message, flush=True)

    def prepare_workloads(self) -> dict[str, Any]:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.args.model_dir)
        source = workloads.PromptSource(tokenizer, self.args.heldout.read_text())
        largest = max(self.plan.requests_for(c) for s in self.plan.levels.values()
                      for ls in s.values() for c in ls)
        described = {}
        for name in self.args.workloads:
            self.specs[name] = workloads.build(name, largest, source, self.args.seed)
            described[name] = {"description": workloads.describe(name),
                               "summary": workloads.summary(self.specs[name])}
        return described

    def run_system(self, name: str) -> None:
        if not any(self.plan.levels.get(name, {}).values()):
            return
        if name == "llamacpp" and llamacpp.unavailable():
            self.log(f"==> {llamacpp.unavailable()}")
            self.systems[name] = {"label": "llama.cpp server", "skipped": llamacpp.unavailable()}
            return
        if name in ("vllm-engine", "vllm") and stack.vllm_unavailable():
            self.log(f"==> {stack.LABELS[name]}: skipped, {stack.vllm_unavailable()}")
            self.systems[name] = {"label": stack.LABELS[name],
                                  "skipped": stack.vllm_unavailable()}
            return
        self.log(f"==> {stack.LABELS[name]}")
        run_dir = self.out / "run" / name
        start = time.perf_counter()
        with self._target(name, run_dir) as target:
            sampler = memory.PeakMemory(target.processes) if target.started else None
            with sampler or _nothing():
                self._warm_up(target)
                for wl, levels in self.plan.levels[name].items():
                    for concurrency in levels:
                        self._level(target, wl, concurrency)
                if name == "ours" and not self.args.skip_perf_analyzer:
                    self._perf_analyzer(target)
                if name == "openai":
                    self._aiperf(target)
            self.systems[name] = {"label": target.label, "url": target.url,
                                  "via_gateway": target.via_gateway,
                                  "notes": target.notes,
                                  "memory": sampler.result() if sampler else None}
        self.phases[name] = round(time.perf_counter() - start, 1)

    @contextmanager
    def _target(self, name: str, run_dir: Path) -> Iterator[stack.Target]:
        if name == "ours" and self.args.url:
            yield stack.external(self.args.url, self.args.api_key)
        elif name in ("ours", "static", "int8", "openai", "vllm-engine"):
            scheduling = "static" if name == "static" else "continuous"
            env = {"int8": llamacpp.FORMATS["int8"].env, "vllm-engine": {"LLM_ENGINE": "vllm"}
                   }.get(name, llamacpp.FORMATS[self.args.format].env)
            with stack.triton_stack(name, run_dir, scheduling, self.args.model_dir, env,
                                    openai=name in ("openai", "vllm-engine")) as target:
                yield target
        elif name == "vllm":
            with stack.bare_vllm(run_dir, self.args.model_dir) as target:
                yield target
        elif name == "llamacpp":
            with llamacpp.server(run_dir, self.args.model_dir, self.log,
                                 format_=self.args.format) as target:
                yield target
        else:
            with stack.naive_baseline(run_dir, self.args.model_dir) as target:
                yield target

    def _warm_up(self, target: stack.Target) -> None:
        specs = self.specs.get("fixed") or next(iter(self.specs.values()))
        asyncio.run(loadgen.run_level(target.request_url, target.headers, specs[:2], 2,
                                      max_seconds=60, grace_s=30, system=target.name,
                                      workload="warm-up", body=target.body,
                                      keep_alive=target.keep_alive))

    def _level(self, target: stack.Target, wl: str, concurrency: int) -> None:
        from tqdm import tqdm

        count = self.plan.requests_for(concurrency)
        specs = self.specs[wl][:count]
        with tqdm(total=count, desc=f"  {target.name} {wl} c={concurrency}", unit="req",
                  leave=False, disable=self.args.no_progress, file=sys.stderr) as bar:
            result = asyncio.run(loadgen.run_level(
                target.request_url, target.headers, specs, concurrency,
                max_seconds=self.plan.max_seconds, grace_s=self.plan.grace_s,
                system=target.name, workload=wl, progress=bar, body=target.body,
                keep_alive=target.keep_alive))
        stats = result.stats()
        self.loadgen_rows.append(stats)
        self.request_rows.extend(loadgen.request_rows(result))
        ttft = stats["ttft_ms"] or {}
        errors = f"  errors {stats['errors']}" if stats["errors"] else ""
        cut = f"  cut {stats['unfinished']}" if stats["unfinished"] else ""
        self.log(f"  {target.name:8s} {wl:5s} c={concurrency:<3d} {stats['completed']:3d} req "
                 f"{stats['requests_per_s']:7.2f} req/s {stats['output_tokens_per_s']:8.0f} "
                 f"tok/s  TTFT p50 {ttft.get('p50', float('nan')):7.0f} ms  "
                 f"p95 {ttft.get('p95', float('nan')):7.0f} ms{errors}{cut}")

    def _aiperf(self, target: stack.Target) -> None:
        """AIPerf on the OpenAI path at the headline concurrency (32 + 64 tokens)."""
        missing = aiperf_run.available()
        if missing:
            self.aiperf = {"skipped": missing}
            self.log(f"  aiperf   skipped: {missing}")
            return
        concurrency = self.plan.headline_concurrency
        requests = self.plan.requests_for(concurrency)
        start = time.perf_counter()
        self.aiperf = aiperf_run.run(target, self.args.model_dir.name, self.args.model_dir,
                                     concurrency, requests, self.out / "aiperf")
        self.phases["aiperf"] = round(time.perf_counter() - start, 1)
        figures = self.aiperf
        if "error" in figures:
            self.log(f"  aiperf   FAILED: {figures['error']}")
            return
        self.log(f"  aiperf   chat c={concurrency:<3d} {figures['completed']:3d} req "
                 f"{figures['output_tokens_per_s']:8.0f} tok/s  TTFT p50 "
                 f"{figures['ttft_p50_ms']:7.1f} ms  ITL p50 {figures['itl_p50_ms']:.2f} ms  "
                 f"errors {figures['errors']}")

    def _perf_analyzer(self, target: stack.Target) -> None:
        specs = self.specs.get("fixed") or next(iter(self.specs.values()))
        out_dir = self.out / "perf_analyzer"
        out_dir.mkdir(parents=True, exist_ok=True)
        input_json = workloads.perf_analyzer_input(specs[:16], out_dir / "input_data.json")
        # Four windows plus warm-up and start-up, with room for a slow 2-core machine.
        timeout = 60 + 10 * (self.plan.perf_interval_ms or 5000) / 1000
        start = time.perf_counter()
        self.perf = perf_analyzer.sweep(target, self.plan.protocols, self.plan.perf_levels,
                                        input_json, out_dir, self.plan.perf_interval_ms,
                                        timeout, by_count=not self.plan.perf_interval_ms,
                                        log=self.log)
        self.phases["perf_analyzer"] = round(time.perf_counter() - start, 1)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        path.write_text("")
        return
    flat = []
    for row in rows:
        item: dict[str, Any] = {}
        for key, value in row.items():
            if value is None:
                continue  # e.g. no inter-token latency: the cells stay empty
            if isinstance(value, dict):
                for sub, v in value.items():
                    item[f"{key}_{sub}"] = v
            else:
                item[key] = value
        flat.append(item)
    columns: list[str] = []
    for item in flat:
        columns += [k for k in item if k not in columns]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(flat)


def _served_weights(model_dir: Path) -> dict[str, int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return memory.weight_bytes(model)


def results_dir(args: argparse.Namespace, mode: str) -> Path:
    if args.results_dir:
        return args.results_dir.resolve()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return HERE / "results" / f"{stamp}-{mode}"


def _link_latest(out: Path) -> None:
    if out.parent != HERE / "results":
        return
    latest = out.parent / "latest"
    try:
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(out.name)
    except OSError:
        pass


def _notes(bench: Bench, plan: Plan) -> list[str]:
    notes = []
    for name in ("ours", "static"):
        rows = [r for r in bench.loadgen_rows if r["system"] == name and r["completed"]]
        if rows and not any(r["streamed_requests"] for r in rows):
            notes.append(f"{name}: the server sent each answer as one SSE event, so TTFT equals "
                         f"the end-to-end latency and there is no inter-token latency.")
    if "baseline" in bench.systems:
        notes.append("baseline: measured on its JSON `generate` route, as the seed design "
                     "answered (one reply with the whole text, so TTFT = end-to-end); reached "
                     "directly, the others through the Envoy gateway (about 0.25 ms a request).")
    if plan.mode == "smoke":
        notes.append("smoke mode: a few requests per level to check the harness; the numbers "
                     "mean nothing.")
    return notes


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    plan = make_plan(args)
    out = results_dir(args, plan.mode)
    out.mkdir(parents=True, exist_ok=True)
    args.model_dir = args.model_dir.resolve()
    # `make` and CI stop us with SIGTERM: unwind so every server we started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    started = time.time()
    info = machine()
    command = "benchmarks/bench.py " + " ".join(
        "<key>" if args.api_key and a == args.api_key else shlex.quote(a)
        for a in (argv or sys.argv[1:]))
    title = (f"{plan.mode} run {datetime.now().strftime('%Y-%m-%d %H:%M')}, "
             f"{info['cores']} cores{', ' + info['gpu'] if info.get('gpu') else ''}")
    print(f"==> make bench ({plan.mode}): results in {out}", flush=True)
    bench = Bench(args, plan, out)
    described = bench.prepare_workloads()

    results: dict[str, Any] = {}
    if not args.skip_quality:
        print("==> float32 vs int8, in-process", flush=True)
        from benchmarks import quality
        start = time.perf_counter()
        results["quantization"] = quality.compare(args.model_dir, args.heldout,
                                                  max_windows=plan.quality_windows,
                                                  new_tokens=plan.quality_new_tokens,
                                                  repeats=plan.quality_repeats)
        bench.phases["quality"] = round(time.perf_counter() - start, 1)
        for mode in ("none", "int8"):
            q = results["quantization"][mode]
            print(f"  {mode:5s} weights {q['weight_bytes_total'] / 1e6:6.2f} MB  "
                  f"{q['tokens_per_s_batch1']:7.0f} tok/s (batch 1)  "
                  f"{q['tokens_per_s_batch8']:7.0f} tok/s (batch 8)  "
                  f"perplexity {q['perplexity']['perplexity']:.2f}", flush=True)
    # The checkpoint's weights (the executor's packed copy pads panels and adds tables).
    results["weights"] = _served_weights(args.model_dir)

    for name in args.systems:
        bench.run_system(name)

    try:
        info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    results.update({
        "meta": {"mode": plan.mode, "command": command, "title": title,
                 "started": datetime.fromtimestamp(started, timezone.utc).isoformat(
                     timespec="seconds"),
                 "duration_s": round(time.time() - started, 1), "phases_s": bench.phases,
                 "machine": info,
                 "machine_line": machine_line(info), "commit": git_commit(),
                 "model_dir": str(args.model_dir), "seed": args.seed,
                 "workloads": described, "workloads_run": list(args.workloads),
                 "plan": {**asdict(plan),
                          "max_requests": f"max({plan.min_requests}, "
                                          f"{plan.requests_per_client} x clients) capped at "
                                          f"{plan.max_requests}"}},
        "systems": bench.systems, "loadgen": bench.loadgen_rows, "perf_analyzer": bench.perf,
        "aiperf": bench.aiperf,
    })
    results["headline"] = report.headline(results)
    results["notes"] = _notes(bench, plan)
    results["plots"] = report.plots(results, out)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    _write_csv(out / "loadgen.csv", bench.loadgen_rows)
    _write_csv(out / "requests.csv", bench.request_rows)
    summary = report.markdown(results)
    (out / "summary.md").write_text(summary + "\n")
    _link_latest(out)
    print("\n" + summary.split("## Load generator")[0].rstrip(), flush=True)
    print(f"\n==> done in {time.time() - started:.0f} s; summary: {out / 'summary.md'}",
          flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; the servers this run started were stopped", file=sys.stderr)
        sys.exit(130)
