"""Drive the OpenAI API with AIPerf, NVIDIA's benchmark client (a client nobody here wrote).

AIPerf lives in its own environment (`make aiperf` creates .venv-aiperf: it needs numpy 2,
which the service's lock cannot take). `make bench` calls `run()` on the stack it measures
through `/v1/chat/completions`; without .venv-aiperf the step is skipped with a note.

The workload is the one the project's peer figures use (docs/performance.md): 32 prompt + 64 output tokens,
`ignore_eos`, streamed, server-reported token counts.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

from benchmarks import stack

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / ".venv-aiperf" / "bin" / "aiperf"
PROMPT_TOKENS, OUTPUT_TOKENS = 32, 64


def available() -> Optional[str]:
    """None when AIPerf can run, else why not."""
    return None if BINARY.exists() else "AIPerf is not installed: `make aiperf` installs it"


def run(target: stack.Target, model: str, tokenizer: Path, concurrency: int, requests: int,
        out_dir: Path, timeout_s: float = 600) -> dict[str, Any]:
    """One AIPerf profile against `target`'s chat endpoint; its headline figures."""
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [str(BINARY), "profile", "-m", model, "--url", target.url,
               "--endpoint-type", "chat", "--streaming", "--tokenizer", str(tokenizer),
               "--api-key", target.api_key, "--concurrency", str(concurrency),
               "--request-count", str(requests),
               "--warmup-request-count", str(min(concurrency, 8)),
               "--prompt-input-tokens-mean", str(PROMPT_TOKENS),
               "--prompt-input-tokens-stddev", "0",
               "--output-tokens-mean", str(OUTPUT_TOKENS), "--output-tokens-stddev", "0",
               "--extra-inputs", "ignore_eos:true", "--use-server-token-count",
               "--random-seed", "2024", "--ui-type", "none", "--no-gpu-telemetry",
               "--artifact-dir", str(out_dir)]
    # Not HF_HUB_OFFLINE: with it AIPerf 0.13 takes a local tokenizer path for a hub id.
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    start = time.perf_counter()
    done = stack.run_quiet(command, env, timeout_s, out_dir / "aiperf.log")
    result: dict[str, Any] = {"concurrency": concurrency, "requests": requests,
                              "exit_code": done.returncode,
                              "seconds": round(time.perf_counter() - start, 1),
                              "command": " ".join(command).replace(target.api_key, "<key>")}
    export = out_dir / "profile_export_aiperf.json"
    if done.returncode != 0 or not export.exists():
        result["error"] = f"exit {done.returncode}; see {out_dir / 'aiperf.log'}"
        return result
    data = json.loads(export.read_text())
    # error_summary: one entry per kind of failure, with how many requests it hit
    errors = sum(int(entry.get("count", 1)) for entry in data.get("error_summary") or [])
    result.update(
        output_tokens_per_s=round(data["output_token_throughput"]["avg"], 1),
        ttft_p50_ms=round(data["time_to_first_token"]["p50"], 2),
        itl_p50_ms=round(data["inter_token_latency"]["p50"], 3),
        completed=int(data["request_count"]["avg"]), errors=int(errors))
    return result
