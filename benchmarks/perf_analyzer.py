"""perf_analyzer 2.51 through the gateway: HTTP and gRPC, one run per concurrency level.

The input data file is generated from the fixed workload (same prompts, lengths and sampling
as the load generator's). Each level keeps perf_analyzer's own CSV (`-f`) and its console log.
Two ways to bound a level: time windows (`--measurement-interval`, 5 s is about right on 2
cores; `-s 50 -r 4` bounds the stability search to four windows), or a fixed request count
(`--request-count`, no stability search: the quick and smoke modes). A level whose windows never
stabilise on a noisy machine is run again with a request count, and the report says so.

  http         unary `llm` over HTTP (KServe v2 infer)
  grpc         unary `llm` over gRPC
  grpc-stream  `llm_stream` (decoupled, one response per token) over gRPC with `--streaming`,
               the only way perf_analyzer reads a decoupled model; latency is to the last
               response of each request
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

from benchmarks.stack import Target, run_quiet
from tools import runtime

BINARY = Path(sys.executable).parent / "perf_analyzer"


RUNS = {"http": ("llm", "http", False), "grpc": ("llm", "grpc", False),
        "grpc-stream": ("llm_stream", "grpc", True)}


def command(target: Target, run: str, concurrency: int, input_json: Path, csv_path: Path,
            interval_ms: int, request_count: int = 0) -> list[str]:
    model, protocol, streaming = RUNS[run]
    cmd = [str(BINARY), "-m", model, "-u", target.hostport, "-i", protocol,
           "--input-data", str(input_json), "--concurrency-range", f"{concurrency}:{concurrency}",
           "-f", str(csv_path)]
    if request_count:
        cmd += ["--request-count", str(request_count)]
    else:
        cmd += ["--measurement-interval", str(interval_ms), "-s", "50", "-r", "4"]
    if target.api_key:
        cmd += ["-H", f"x-api-key: {target.api_key}"]  # gRPC metadata keys must be lower-case
    if streaming:
        cmd.append("--streaming")
    return cmd


def read_csv(path: Path) -> dict[str, Any]:
    """The level's row of perf_analyzer's CSV, latencies converted from us to ms."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return {}
    row = rows[-1]
    out: dict[str, Any] = {"inferences_per_s": float(row["Inferences/Second"])}
    for column in ("p50 latency", "p90 latency", "p95 latency", "p99 latency", "Avg latency"):
        if row.get(column):
            out[column.replace(" latency", "_ms").replace("Avg", "avg")] = \
                round(float(row[column]) / 1000.0, 3)
    return out


def requests_for(concurrency: int) -> int:
    """The request count of a count-bounded level: a few rounds of every client."""
    return max(8, 4 * concurrency)


def sweep(target: Target, protocols: list[str], levels: list[int], input_json: Path,
          out_dir: Path, interval_ms: int, timeout_s: float, by_count: bool = False,
          log: Any = print) -> list[dict[str, Any]]:
    """Run every (protocol, level); a failed level is recorded with its log, never raised."""
    if not BINARY.exists():
        return [{"protocol": p, "concurrency": c, "ok": False,
                 "error": f"{BINARY} not found (tritonclient[http,grpc] installs it)"}
                for p in protocols for c in levels]
    env = runtime.triton_env(target.run_dir or runtime.RUN_DIR)  # puts client_lib_dir on it
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for protocol in protocols:
        for level in levels:
            csv_path = out_dir / f"{protocol}_c{level}.csv"
            log_path = out_dir / f"{protocol}_c{level}.log"
            count = requests_for(level) if by_count else 0
            cmd = command(target, protocol, level, input_json, csv_path, interval_ms, count)
            done = run_quiet(cmd, env, timeout_s, log_path)
            if done.returncode != 0 and not count and "stable" in log_path.read_text(
                    errors="replace"):
                count = requests_for(level)
                log(f"  perf_analyzer {protocol} c={level}: windows did not stabilise; "
                    f"measuring {count} requests instead")
                cmd = command(target, protocol, level, input_json, csv_path, interval_ms, count)
                done = run_quiet(cmd, env, timeout_s, log_path)
            entry: dict[str, Any] = {"protocol": protocol, "model": RUNS[protocol][0],
                                     "concurrency": level,
                                     "ok": done.returncode == 0 and csv_path.exists(),
                                     "bounded_by": (f"{count} requests" if count else
                                                    f"{interval_ms} ms windows"),
                                     "csv": csv_path.name, "log": log_path.name,
                                     "command": " ".join(c if "x-api-key" not in c else
                                                         "'x-api-key: <key>'" for c in cmd)}
            if entry["ok"]:
                entry.update(read_csv(csv_path))
                log(f"  perf_analyzer {protocol:11s} c={level:<3d} "
                    f"{entry['inferences_per_s']:8.2f} infer/s  "
                    f"p50 {entry.get('p50_ms', 0):8.1f} ms  p99 {entry.get('p99_ms', 0):8.1f} ms")
            else:
                tail = [line for line in log_path.read_text(errors="replace").splitlines()
                        if line.strip() and not line.startswith("WARNING")][-2:]
                entry["error"] = (f"exit {done.returncode}" +
                                  (" (timed out)" if done.returncode == 124 else "") +
                                  (": " + " | ".join(tail) if tail else ""))
                log(f"  perf_analyzer {protocol} c={level} FAILED: {entry['error']}")
            results.append(entry)
    return results
