#!/usr/bin/env python3
"""What the gateway adds to a request: p50/p90 latency through Envoy vs straight to Triton.

Starts the service as `make serve` does (own ports, own run dir under .run/), then sends the
same small requests to Triton's HTTP port and to the gateway, interleaved so both see the
same machine, with keep-alive connections on both sides. Two request kinds: model readiness
(no model work: the pure proxy cost) and a 1-token generate. Repeated `--runs` times; the
median of the runs' p50s is reported.

  python benchmarks/gateway_overhead.py [--requests 300] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests

from benchmarks.interleaved import SMALL_CALLS, latencies_ms
from tools import runtime

ROOT = Path(__file__).resolve().parent.parent

PORTS = {"LLM_HTTP_PORT": 18600, "LLM_GRPC_PORT": 18601, "LLM_METRICS_PORT": 18602,
         "GATEWAY_PORT": 18680, "GATEWAY_ADMIN_PORT": 18690}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(requests_per_kind: int, key: str) -> dict[str, dict[str, float]]:
    direct, gateway = requests.Session(), requests.Session()
    gateway.headers["X-API-Key"] = key
    triton = f"http://127.0.0.1:{PORTS['LLM_HTTP_PORT']}"
    envoy = f"http://127.0.0.1:{PORTS['GATEWAY_PORT']}"
    out = {}
    measured = latencies_ms(SMALL_CALLS, {"direct": (direct, triton),
                                          "gateway": (gateway, envoy)}, requests_per_kind)
    for name, times in measured.items():
        out[name] = {f"{label}_p{int(q * 100)}_ms": round(percentile(v, q), 3)
                     for label, v in times.items() for q in (0.5, 0.9)}
        out[name]["added_p50_ms"] = round(out[name]["gateway_p50_ms"]
                                          - out[name]["direct_p50_ms"], 3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="per kind and side per run")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    run_dir = runtime.RUN_DIR / "gateway-overhead"
    env = {**os.environ, "LLM_RUN_DIR": str(run_dir), "LLM_KEYS_DIR": str(run_dir / "keys"),
           **{k: str(v) for k, v in PORTS.items()}}
    store = runtime.KeyStore(run_dir / "keys")
    key, _ = store.issue("overhead", "benchmark")  # a tier whose bucket never interferes
    if not store.active_named("dev"):
        store.issue("dev", "standard")
    runner = subprocess.Popen([sys.executable, str(ROOT / "tools" / "serve.py"), "serve"],
                              env=env, stdout=(run_dir / "runner.log").open("ab"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ready = f"http://127.0.0.1:{PORTS['GATEWAY_PORT']}/readyz"
        deadline = time.monotonic() + 180
        while True:
            try:
                if requests.get(ready, timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if runner.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the service did not start; see {run_dir / 'runner.log'}")
            time.sleep(0.5)
        runs = []
        for run in range(args.runs):
            runs.append(measure(args.requests, key))
            print(f"run {run + 1}: {json.dumps(runs[-1])}", flush=True)
    finally:
        runner.send_signal(signal.SIGTERM)
        runner.wait(120)
    summary = {kind: {field: round(statistics.median(r[kind][field] for r in runs), 3)
                      for field in runs[0][kind]} for kind in runs[0]}
    print("median of runs:", json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
