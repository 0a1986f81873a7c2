#!/usr/bin/env python3
"""What reading every answer costs the gateway: Envoy's CPU time per streamed token, with the
usage filter (gateway/usage.lua: token counts and queue/prefill/decode times for the access
log and the per-key usage) and without it.

One Triton (the demo model by default: the fastest token rate, so the most chunks for the
gateway to read; `--model-dir` for another, e.g. the real model) and two gateways in front
of it, rendered from the same settings; in the second the usage filter's script is emptied.
Each run streams the same concurrent generations through
each gateway in turn (SSE `generate_stream`, then gRPC streaming) and reads the gateway's CPU
time from /proc before and after. The median over runs is reported, with Envoy's worker
count (its --concurrency: the machine's cores unless told).

  python -m benchmarks.gateway_usage [--streams 32] [--tokens 256] [--rounds 5] [--runs 3]
                                     [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import requests
import tritonclient.grpc as grpcclient

from tools import runtime
from tools.processes import gateway_process, http_ok, triton_process, triton_settings

CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def sse_stream(url: str, key: str, tokens: int) -> int:
    body = {"text_input": "The list", "max_tokens": tokens, "ignore_eos": True}
    with requests.post(url + "/generate_stream", json=body, headers={"X-API-Key": key},
                       stream=True, timeout=120) as reply:
        reply.raise_for_status()
        for _ in reply.iter_lines():
            pass
    return tokens


def grpc_stream(target: str, key: str, tokens: int) -> int:
    import numpy as np

    client = grpcclient.InferenceServerClient(target)
    results: "queue.Queue[Any]" = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)),
                        headers={"x-api-key": key})
    text = grpcclient.InferInput("text_input", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"The list"]], dtype=object))
    limit = grpcclient.InferInput("max_tokens", [1, 1], "INT32")
    limit.set_data_from_numpy(np.array([[tokens]], dtype=np.int32))
    eos = grpcclient.InferInput("ignore_eos", [1, 1], "BOOL")
    eos.set_data_from_numpy(np.array([[True]]))
    client.async_stream_infer("llm_stream", [text, limit, eos], enable_empty_final_response=True)
    while True:
        result, error = results.get(timeout=120)
        if error is not None:
            raise RuntimeError(error)
        if result.get_response().parameters["triton_final_response"].bool_param:
            break
    client.stop_stream()
    client.close()
    return tokens


def measure(pid: int, streams: int, rounds: int, one: Callable[[], int]) -> float:
    """µs of the gateway's CPU per token over `rounds` of `streams` concurrent generations
    (enough tokens that the kernel's 10 ms accounting tick is a small share)."""
    before = cpu_seconds(pid)
    done: list[int] = []
    for _ in range(rounds):
        threads = [threading.Thread(target=lambda: done.append(one())) for _ in range(streams)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return (cpu_seconds(pid) - before) / sum(done) * 1e6


def without_usage(config: Path) -> None:
    """Empty the usage filter's script in a rendered config (the baseline gateway)."""
    lines = config.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if "name: llm.usage" in line)
    script = next(i for i in range(at, at + 8) if "inline_string:" in lines[i])
    indent = lines[script][:lines[script].index("inline_string:")]
    lines[script] = f'{indent}inline_string: "-- usage filter off (benchmark baseline)"'
    config.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5, help="batches of streams per figure")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model-dir", type=Path, default=runtime.DEMO_MODEL,
                        help="the model Triton serves (default: the demo model)")
    args = parser.parse_args()
    run_dir = runtime.RUN_DIR / "gateway-usage"
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = triton_settings(run_dir, LLM_MODEL_DIR=str(args.model_dir.resolve()))
    triton = triton_process(settings, LLM_DTYPE="float32")
    gateways = {}
    for name in ("with_usage", "without_usage"):
        process, gateway = gateway_process(settings, name=name)
        if name == "without_usage":
            without_usage(Path(process.command[process.command.index("-c") + 1]))
        gateways[name] = (process, gateway)
    key, _ = runtime.KeyStore(run_dir / "keys").issue("usage-bench", "benchmark")
    processes = [triton, *(p for p, _ in gateways.values())]
    try:
        triton.start()
        triton.wait_until(lambda: http_ok(f"{settings.http_url}/v2/models/llm/ready"), 180)
        for process, gateway in gateways.values():
            process.start()
            process.wait_until(lambda g=gateway: http_ok(f"http://{g.host}:{g.port}/readyz"), 60)
        time.sleep(2)  # the key filter reaches every worker
        results: dict[str, dict[str, list[float]]] = {
            name: {"sse": [], "grpc": []} for name in gateways}
        for run in range(args.runs):
            for name, (process, gateway) in gateways.items():
                assert process.proc is not None
                url = f"http://{gateway.host}:{gateway.port}"
                results[name]["sse"].append(measure(
                    process.proc.pid, args.streams, args.rounds,
                    lambda: sse_stream(url, key, args.tokens)))
                results[name]["grpc"].append(measure(
                    process.proc.pid, args.streams, args.rounds,
                    lambda: grpc_stream(f"{gateway.host}:{gateway.port}", key, args.tokens)))
            print(f"run {run + 1}: {json.dumps(results)}", flush=True)
    finally:
        for process in reversed(processes):
            process.stop(grace=10)
    summary = {name: {kind: round(statistics.median(v), 2) for kind, v in kinds.items()}
               for name, kinds in results.items()}
    print(json.dumps({"gateway_cpu_us_per_token (median of runs)": summary,
                      "streams": args.streams, "tokens_per_stream": args.tokens,
                      "rounds": args.rounds, "model": args.model_dir.name,
                      "envoy_workers": os.cpu_count()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
