#!/usr/bin/env python3
"""One prepared check of the GPU path, made for the GPU machine this project can borrow.

That machine: one H100 or H200, 16 cores, no network; its Python 3.12 has torch (CUDA),
transformers, peft and accelerate, but no vLLM, Triton or Envoy, and the whole visit is 15
minutes of device time. So this checks what can run there, in about 5 minutes, each step in
its own process under its own time limit (a hang costs that step, not the visit):

  environment   Python, torch, CUDA, the device, transformers, bitsandbytes, cores
  engine_suite  tests/textgen, on the device the engine picks (CUDA there)
  correctness   the transformers engine (every prompt at once) against HF `generate` (one at
                a time), greedy, on the demo model in float32: the same token ids
  throughput    benchmarks/gpu_engine.py: the transformers engine at batch 1 and 256
                (max_num_seqs 256) against HF `generate`'s static batches, on a 1.2B Llama
                with random bf16 weights
  int8          the engine with `quantization int8` (bitsandbytes LLM.int8() on CUDA, torch's
                dynamic int8 on a CPU); skipped, saying why, where bitsandbytes is missing

It writes gpu_check.json and gpu_check.md (the table, with the issue's targets) under --out.
`--cpu-dry-run` runs the same steps on a CPU with a tiny model and small sizes; `make test`
runs it, so the script cannot rot. What that machine cannot prove (the vLLM engine, the full
stack) and the command that would: docs/operations.md, "GPU".

  bash benchmarks/gpu_check.sh                  on the GPU machine (writes to $OUT)
  bash benchmarks/gpu_check.sh --cpu-dry-run    anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL = ROOT / "demo_model"

# On the GPU machine: the engine's own tests, but those of the real model, which is built from
# a 93 MB PyPI download (that machine has no network, and 538 MB would not fit the tree); on a
# CPU dry run, a fast slice of them (make test runs them all anyway).
SUITE_GPU = ["tests/textgen", "--ignore=tests/textgen/executors/test_real_model.py"]
SUITE_DRY = ["tests/textgen/transformers_engine/test_choices.py"]

# The targets on the borrowed machine (measured only on CUDA).
TARGET_BATCH_256_OVER_HF = 10.0
TARGET_BATCH_1_TOKENS_PER_S = 500.0

Result = dict[str, Any]


class Skipped(Exception):
    """The step cannot run here; the message says why."""


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[bool, Path], Result]
    limit_s: float  # on the GPU machine; a dry run gets twice as long on a slow CPU


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def environment(dry_run: bool, out: Path) -> Result:
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    if not cuda and not dry_run:
        raise RuntimeError("no CUDA device is visible: on a CPU, run with --cpu-dry-run")
    try:
        import bitsandbytes
        bnb = bitsandbytes.__version__
    except ImportError:
        bnb = None
    return {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0) if cuda else
            "cpu", "transformers": transformers.__version__, "bitsandbytes": bnb,
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def engine_suite(dry_run: bool, out: Path) -> Result:
    report = out / "engine_suite.xml"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
         *(SUITE_DRY if dry_run else SUITE_GPU)], cwd=ROOT, capture_output=True, text=True)
    (out / "engine_suite.log").write_text(done.stdout + done.stderr)
    if not report.exists():
        raise RuntimeError(f"pytest wrote no report:\n{(done.stdout + done.stderr)[-2000:]}")
    suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    result = {**counts, "failed": failed[:20], "device": _device()}
    if done.returncode != 0:
        raise RuntimeError(json.dumps(result))
    return result


def _generate(engine: Any, requests: list[Any]) -> list[Any]:
    """Submit every request at once; their outputs in order."""
    from textgen.core.outputs import Collector

    sinks = [Collector() for _ in requests]
    for request, sink in zip(requests, sinks):
        engine.submit(request, sink)
    return [sink.wait()[0] for sink in sinks]


def correctness(dry_run: bool, out: Path) -> Result:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from textgen.core.config import EngineConfig
    from textgen.core.outputs import EngineObserver
    from textgen.core.validation import GenerationRequest
    from textgen.engines import create_engine

    device, new = _device(), 32
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 on both sides
    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL)
    lines = [line.strip() for line in (DEMO_MODEL / "heldout.txt").read_text().splitlines()
             if len(line.split()) > 6][:8]
    prompts = [tuple(tokenizer(line)["input_ids"][:24]) for line in lines]
    engine = create_engine(EngineConfig(model_dir=DEMO_MODEL, device=device, dtype="float32",
                                        engine="transformers", max_num_seqs=8),
                           EngineObserver())
    try:
        outputs = _generate(engine, [GenerationRequest(prompt="", prompt_ids=ids, max_tokens=new,
                                                       ignore_eos=True, logprobs=0)
                                     for ids in prompts])
    finally:
        engine.shutdown()
    ours = [[entry.chosen.token_id for entry in output.logprobs] for output in outputs]
    model = AutoModelForCausalLM.from_pretrained(DEMO_MODEL, dtype=torch.float32).to(device)
    theirs = []
    with torch.inference_mode():
        for ids in prompts:
            tokens = torch.tensor([ids], device=device)
            generated = model.generate(tokens, attention_mask=torch.ones_like(tokens),
                                       max_new_tokens=new, min_new_tokens=new, do_sample=False)
            theirs.append(generated[0, len(ids):].tolist())
    same = sum(a == b for a, b in zip(ours, theirs))
    result = {"prompts": len(prompts), "identical": same, "new_tokens": new, "device": device,
              "dtype": "float32"}
    if same != len(prompts):
        first = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
        raise RuntimeError(json.dumps({**result, "first_difference": {
            "prompt": first, "engine": ours[first], "hf_generate": theirs[first]}}))
    return result


def throughput(dry_run: bool, out: Path) -> Result:
    figures = out / "gpu_engine.json"
    sizes = (["--tiny", "--requests", "16", "--max-seqs", "16", "--hf-requests", "8",
              "--batch", "8"] if dry_run else
             ["--requests", "256", "--max-seqs", "256", "--hf-requests", "64", "--batch", "32"])
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_engine", "--skip-vllm",
                           "--json", str(figures), *sizes], cwd=ROOT, capture_output=True,
                          text=True)
    (out / "gpu_engine.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError((done.stdout + done.stderr)[-2000:])
    data = json.loads(figures.read_text())
    engine, hf_key = data["transformers_engine"], next(k for k in data if k.startswith("hf_"))
    return {"model": "2-layer tiny Llama, float32" if dry_run else "1.2B Llama, random bf16",
            "requests": data["requests"],
            "batch_1_tokens_per_s": engine["batch_1"]["output_tokens_per_s"],
            "batch_1_ttft_p50_ms": engine["batch_1"]["ttft_p50_ms"],
            "all_at_once_tokens_per_s": engine["all_at_once"]["output_tokens_per_s"],
            "all_at_once_ttft_p50_ms": engine["all_at_once"]["ttft_p50_ms"],
            "hf_static_tokens_per_s": data[hf_key], "hf_static": hf_key}


def int8(dry_run: bool, out: Path) -> Result:
    from textgen.core.config import EngineConfig
    from textgen.core.outputs import EngineObserver
    from textgen.core.validation import GenerationRequest
    from textgen.engines import create_engine

    device = _device()
    if device == "cuda":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise Skipped("bitsandbytes is not installed on this machine: `make gpu-check-wheels`"
                          " carries its wheel (41 MiB) to it") from None
    engine = create_engine(EngineConfig(model_dir=DEMO_MODEL, device=device, quantization="int8",
                                        dtype="float32" if device == "cpu" else "auto",
                                        engine="transformers"), EngineObserver())
    try:
        forward = engine.describe()["forward_path"]
        start = time.perf_counter()
        output, = _generate(engine, [GenerationRequest(prompt="The Python language",
                                                       max_tokens=16, ignore_eos=True)])
        elapsed = time.perf_counter() - start
    finally:
        engine.shutdown()
    if output.error or output.completion_tokens != 16:
        raise RuntimeError(f"int8 generation: {output}")
    how = ("bitsandbytes LLM.int8()" if device == "cuda" else
           "the C forward's int8 products" if forward == "c" else "torch dynamic int8")
    return {"device": device, "how": how, "completion_tokens": 16, "seconds": round(elapsed, 3)}


STEPS = (Step("environment", environment, 60), Step("engine_suite", engine_suite, 150),
         Step("correctness", correctness, 60), Step("throughput", throughput, 150),
         Step("int8", int8, 45))


def run_step(name: str, dry_run: bool, out: Path) -> int:
    """Inside the step's own process: write <out>/<name>.json with its status and result."""
    step = next(s for s in STEPS if s.name == name)
    try:
        record = {"status": "passed", "result": step.run(dry_run, out)}
    except Skipped as skip:
        record = {"status": "skipped", "reason": str(skip)}
    except Exception as exc:  # noqa: BLE001  (the record says what failed, the driver goes on)
        record = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    (out / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    return 0


def targets(steps: dict[str, Result], dry_run: bool) -> list[Result]:
    """The issue's targets against what was measured (not judged on a CPU dry run)."""
    measured = steps.get("throughput", {}).get("result")
    if not measured:
        return []
    ratio = measured["all_at_once_tokens_per_s"] / measured["hf_static_tokens_per_s"]
    rows = [(f"transformers engine, {measured['requests']} requests at once / HF generate "
             "static batching", "≥ 10x", f"{ratio:.1f}x", ratio >= TARGET_BATCH_256_OVER_HF),
            (f"transformers engine at batch 1, {measured['model']}", "≥ 500 tok/s",
             f"{measured['batch_1_tokens_per_s']:.0f} tok/s",
             measured["batch_1_tokens_per_s"] >= TARGET_BATCH_1_TOKENS_PER_S)]
    return [{"target": name, "wanted": wanted, "measured": value,
             "met": None if dry_run else met} for name, wanted, value, met in rows]


def _summary(record: Result) -> str:
    if record["status"] != "passed":
        return record.get("reason", "")[:300].replace("|", "/").replace("\n", " ")
    return ", ".join(f"{k}={v}" for k, v in record["result"].items()
                     if not isinstance(v, (list, dict)))


def write_report(out: Path, report: Result) -> None:
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# GPU check: {report['device']}{' (CPU dry run)' if report['dry_run'] else ''}",
             "", f"{report['started']}, {report['seconds']} s in all, commit {report['commit']}",
             "", "| step | status | seconds | result |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {step['status']} | {step['seconds']} | {_summary(step)} |"
              for name, step in report["steps"].items()]
    if report["targets"]:
        lines += ["", "| target | wanted | measured | met |", "| --- | --- | --- | --- |"]
        lines += [f"| {t['target']} | {t['wanted']} | {t['measured']} | "
                  f"{'n/a (dry run)' if t['met'] is None else 'yes' if t['met'] else 'NO'} |"
                  for t in report["targets"]]
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--out", type=Path, default=ROOT / ".run" / "gpu-check",
                        help="where gpu_check.json, gpu_check.md and the logs go [%(default)s]")
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="the same steps on a CPU, with a tiny model and small sizes")
    parser.add_argument("--step", choices=[s.name for s in STEPS], help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.step:
        return run_step(args.step, args.cpu_dry_run, out)
    start, steps = time.monotonic(), {}
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    for step in STEPS:
        limit = step.limit_s * (2 if args.cpu_dry_run else 1)
        print(f"==> {step.name} (at most {limit:.0f} s)", flush=True)
        began = time.monotonic()
        (out / f"{step.name}.json").unlink(missing_ok=True)
        try:
            subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--step", step.name,
                            "--out", str(out), *(["--cpu-dry-run"] if args.cpu_dry_run else [])],
                           cwd=ROOT, timeout=limit)
            record_file = out / f"{step.name}.json"
            record = (json.loads(record_file.read_text()) if record_file.exists() else
                      {"status": "failed", "reason": "the step's process died without a record"})
        except subprocess.TimeoutExpired:
            record = {"status": "failed", "reason": f"timed out after {limit:.0f} s"}
        record["seconds"] = round(time.monotonic() - began, 1)
        steps[step.name] = record
        print(f"    {record['status']}: {_summary(record)}", flush=True)
        if step.name == "environment" and record["status"] != "passed":
            break  # not the machine this check is for: the other steps would mislead
    # The device machine gets the tree without .git: its caller names the commit.
    commit = os.environ.get("LLM_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
        text=True).stdout.strip() or "unknown"
    report = {"device": steps["environment"].get("result", {}).get("device", "unknown"),
              "dry_run": args.cpu_dry_run, "commit": commit,
              "started": started,
              "seconds": round(time.monotonic() - start, 1), "steps": steps,
              "targets": targets(steps, args.cpu_dry_run)}
    write_report(out, report)
    print((out / "gpu_check.md").read_text(), flush=True)
    return 1 if any(s["status"] == "failed" for s in steps.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
