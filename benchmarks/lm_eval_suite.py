"""lm-evaluation-harness against the service and against its own `hf` backend, on one model:
does a client nobody here wrote get the model's own scores through the gateway?

The tasks are built here from text the project ships (demo_model/heldout.txt, held-out
tutorial prose): each item is the start of a sentence and its true ending.
  llm_service_choice    multiple_choice: the true ending among three taken from other items
                        (a loglikelihood per choice; acc, acc_norm)
  llm_service_greedy    loglikelihood: the next word's, and whether greedy decoding would
                        write it (acc: lm-eval's is_greedy, from top_logprobs)
  llm_service_continue  generate_until: the next word (exact_match)
`lm_eval` (from .venv-eval, `make lm-eval`) runs them twice: `--model hf` on the model
directory, and `--model local-completions` on the gateway's /v1/completions with an API key,
as a user would (prompts as token ids, its default). Per sample, the loglikelihoods must agree
within `--tolerance`, and the accuracies and generations must be equal.

  make up && LLM_API_KEY=... make bench-lm-eval          # or, with a model of your own:
  .venv/bin/python -m benchmarks.lm_eval_suite --url http://127.0.0.1:8080 \\
      --key "$LLM_API_KEY" --model-dir "$LLM_MODEL_DIR"
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
LM_EVAL = ROOT / ".venv-eval" / "bin" / "lm_eval"
SOURCE = ROOT / "demo_model" / "heldout.txt"
ITEMS = 10  # per task
TASKS = ("llm_service_choice", "llm_service_greedy", "llm_service_continue")
# The score each task reports, as lm_eval names it (metric,filter).
_METRIC = {"llm_service_choice": "acc,none", "llm_service_greedy": "acc,none",
           "llm_service_continue": "exact_match,first_word"}


def _sentences(text: str) -> list[tuple[str, str]]:
    """(start, ending) of the first sentence of each paragraph that is plain prose."""
    items = []
    for paragraph in (p.strip() for p in text.split("\n")):
        sentence = re.split(r"(?<=[.!?])\s+", paragraph)[0] if paragraph else ""
        words = sentence.split()
        if "::" in sentence or not 8 <= len(words) <= 30:
            continue
        cut = max(3, int(len(words) * 0.6))
        items.append((" ".join(words[:cut]), " ".join(words[cut:])))
    return items


def _task(name: str, data: Path, output_type: str, fields: str, metrics: list[str]) -> str:
    listed = "".join(f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true\n"
                     for m in metrics)
    return (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    test: {json.dumps(str(data))}\ntest_split: test\n"
            f"output_type: {output_type}\n{fields}metric_list:\n{listed}"
            "metadata:\n  version: 1.0\n")


def build_tasks(folder: Path, text: str) -> Path:
    """Write the three tasks and their data into `folder` (lm_eval's --include_path)."""
    items = _sentences(text)
    if len(items) < 2 * ITEMS:
        raise SystemExit(f"{SOURCE} gives {len(items)} sentences; the tasks need {2 * ITEMS}")
    folder.mkdir(parents=True, exist_ok=True)
    choice = []
    for i, (start, ending) in enumerate(items[:ITEMS]):
        others = [items[(i + j) % len(items)][1] for j in (3, 7, 11)]
        choices = others[:i % 4] + [ending] + others[i % 4:]  # the true one moves around
        choice.append({"context": start, "choices": choices, "label": i % 4})
    greedy = [{"context": s, "ending": e.split()[0]} for s, e in items[:ITEMS]]
    cont = [{"context": s, "target": e.split()[0]} for s, e in items[ITEMS:2 * ITEMS]]
    for name, rows in (("choice", choice), ("greedy", greedy), ("continue", cont)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "choice.yaml").write_text(_task(
        "llm_service_choice", folder / "choice.jsonl", "multiple_choice",
        'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n',
        ["acc", "acc_norm"]))
    # loglikelihood does not put target_delimiter between context and target: the space is
    # the target's own.
    (folder / "greedy.yaml").write_text(_task(
        "llm_service_greedy", folder / "greedy.jsonl", "loglikelihood",
        'doc_to_text: "{{context}}"\ndoc_to_target: " {{ending}}"\n', ["acc"]))
    (folder / "continue.yaml").write_text(_task(
        "llm_service_continue", folder / "continue.jsonl", "generate_until",
        'doc_to_text: "{{context}}"\ndoc_to_target: "{{target}}"\n'
        'generation_kwargs:\n  until: ["\\n", "."]\n  max_gen_toks: 8\n  do_sample: false\n'
        "  temperature: 0.0\nfilter_list:\n  - name: first_word\n    filter:\n"
        "      - function: regex\n        regex_pattern: '^\\s*(\\w+)'\n"
        "        group_select: 0\n        fallback: \"[invalid]\"\n"
        "      - function: take_first\n", ["exact_match"]))
    return folder


@dataclass(frozen=True)
class Run:
    """One lm_eval run: per task its metric and its samples (lm_eval's log_samples records)."""

    backend: str
    seconds: float
    scores: dict[str, float]
    samples: dict[str, list[dict[str, Any]]]


def run_lm_eval(backend: str, model_args: str, tasks: Path, work: Path,
                api_key: str = "") -> Run:
    """`lm_eval` on the three tasks in a process of its own, offline; its samples read back."""
    if not LM_EVAL.exists():
        raise SystemExit(f"{LM_EVAL} is missing: run `make lm-eval` (its environment)")
    out = work / backend
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(work / "hf_home"), "TOKENIZERS_PARALLELISM": "false",
           "OPENAI_API_KEY": api_key}
    command = [str(LM_EVAL), "--model", backend, "--model_args", model_args,
               "--tasks", ",".join(TASKS), "--include_path", str(tasks), "--batch_size", "1",
               "--output_path", str(out), "--log_samples", "--seed", "1234"]
    if backend == "hf":
        command += ["--device", "cpu"]
    started = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"lm_eval --model {backend} failed ({done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    seconds = time.monotonic() - started
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    samples = {task: [json.loads(line) for line in
                      next(out.rglob(f"samples_{task}_*.jsonl")).read_text().splitlines()]
               for task in TASKS}
    return Run(backend, seconds, {t: float(results[t][_METRIC[t]]) for t in TASKS},
               samples)


def loglikelihoods(run: Run, task: str) -> list[float]:
    """Every loglikelihood the task scored, sample by sample (choices in order)."""
    return [float(resp[0]) for sample in sorted(run.samples[task], key=lambda s: s["doc_id"])
            for resp in sample["filtered_resps"]]


def generations(run: Run) -> list[str]:
    task = "llm_service_continue"
    return [sample["resps"][0][0]
            for sample in sorted(run.samples[task], key=lambda s: s["doc_id"])]


@dataclass(frozen=True)
class Comparison:
    max_difference: float  # the largest |loglikelihood difference| over every scored choice
    scored: int            # how many loglikelihoods were compared
    same_scores: bool      # every task's accuracy equal
    same_generations: bool


def compare(reference: Run, served: Run) -> Comparison:
    differences = [abs(a - b) for task in ("llm_service_choice", "llm_service_greedy")
                   for a, b in zip(loglikelihoods(reference, task),
                                   loglikelihoods(served, task), strict=True)]
    return Comparison(max(differences), len(differences), reference.scores == served.scores,
                      generations(reference) == generations(served))


def evaluate(url: str, key: str, model_dir: Path, model: str, work: Path,
             max_length: int = 2048) -> tuple[Run, Run]:
    """The `hf` backend on `model_dir`, then local-completions on the service at `url`."""
    tasks = build_tasks(work / "tasks", SOURCE.read_text())
    reference = run_lm_eval("hf", f"pretrained={model_dir},dtype=float32", tasks, work)
    served = run_lm_eval(
        "local-completions",
        f"base_url={url.rstrip('/')}/v1/completions,model={model},tokenizer={model_dir},"
        f"tokenizer_backend=huggingface,num_concurrent=1,max_retries=1,"
        f"max_length={max_length}", tasks, work, api_key=key)
    return reference, served


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("LLM_URL", "http://127.0.0.1:8080"),
                        help="the gateway (default: $LLM_URL or http://127.0.0.1:8080)")
    parser.add_argument("--key", default=os.environ.get("LLM_API_KEY", ""),
                        help="an API key (default: $LLM_API_KEY)")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "demo_model",
                        help="the served model's directory (the hf backend loads it)")
    parser.add_argument("--model", help="the served model's id (default: the directory's "
                                         "name, as the service names it)")
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="the largest loglikelihood difference allowed")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lm-eval-") as work:
        reference, served = evaluate(args.url, args.key, args.model_dir.resolve(),
                                     args.model or args.model_dir.resolve().name, Path(work))
    result = compare(reference, served)
    print(f"{'task':<22} {'hf':>8} {'service':>8}")
    for task in TASKS:
        print(f"{task:<22} {reference.scores[task]:8.3f} {served.scores[task]:8.3f}")
    print(f"loglikelihoods compared: {result.scored}, largest difference "
          f"{result.max_difference:.2e} (tolerance {args.tolerance:g}); generations "
          f"{'equal' if result.same_generations else 'DIFFER'}; lm_eval took "
          f"{reference.seconds:.0f} s (hf) and {served.seconds:.0f} s (service)")
    ok = result.max_difference <= args.tolerance and result.same_scores \
        and result.same_generations
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
