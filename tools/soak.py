#!/usr/bin/env python3
"""Soak test: a long streamed load through the gateway, sampling every process's memory.

Why: memory growth in long-running decoupled Python models is a known Triton pain point
(server #6270). This starts the service as `make serve` does (on its own ports, in
.run/soak/), streams generations with random lengths and random early disconnects from a few
clients for `--minutes`, samples the resident memory of tritonserver, each Python-backend
stub and Envoy every few seconds, and reports growth per thousand requests (least-squares
slope after a warm-up), plus errors by kind.

  make soak                        # 10 minutes
  python tools/soak.py --minutes 2 --clients 4
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from tools import runtime

PORTS = {"LLM_HTTP_PORT": 18500, "LLM_GRPC_PORT": 18501, "LLM_METRICS_PORT": 18502,
         "GATEWAY_PORT": 18580, "GATEWAY_ADMIN_PORT": 18590}


def rss_by_process(triton_pid: int, envoy_pid: int) -> dict[str, float]:
    """Resident MB of tritonserver, each of its stubs (by model) and Envoy."""
    out = {}
    alive, _ = runtime.python_stubs(triton_pid)
    named = {"tritonserver": triton_pid, "envoy": envoy_pid}
    for pid in alive:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        named[f"stub:{Path(cmdline[1].decode()).parent.parent.name}"] = pid
    for name, pid in named.items():
        try:
            pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
            out[name] = pages * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:
            pass
    return out


def slope_per_thousand(points: list[tuple[int, float]]) -> float:
    """Least-squares MB per 1000 requests."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return 0.0 if var == 0 else 1000 * sum((x - mx) * (y - my) for x, y in points) / var


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="[%(default)s]")
    parser.add_argument("--clients", type=int, default=6, help="[%(default)s]")
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument("--warmup-requests", type=int, default=200,
                        help="requests before the growth fit starts [%(default)s]")
    parser.add_argument("--out", type=Path, default=runtime.RUN_DIR / "reports" / "soak.json")
    args = parser.parse_args()

    run_dir = runtime.RUN_DIR / "soak"
    env = {**os.environ, "LLM_RUN_DIR": str(run_dir), "LLM_KEYS_DIR": str(run_dir / "keys"),
           **{k: str(v) for k, v in PORTS.items()}}
    key, _ = runtime.KeyStore(run_dir / "keys").issue("soak", "premium")
    if not runtime.KeyStore(run_dir / "keys").active_named("dev"):
        runtime.KeyStore(run_dir / "keys").issue("dev", "standard")
    url = f"http://127.0.0.1:{PORTS['GATEWAY_PORT']}"
    print(f"==> starting the service in {run_dir}", flush=True)
    runner = subprocess.Popen([sys.executable, "-m", "tools.serve", "serve"],
                              env=env, stdout=(run_dir / "runner.log").open("ab"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not _ok(url + "/readyz"):
            if runner.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the service did not start; see {run_dir / 'runner.log'}")
            time.sleep(0.5)
        triton = runtime.find_process(b"tritonserver",
                                      f"--http-port={PORTS['LLM_HTTP_PORT']}".encode())
        envoy = runtime.find_process(b"envoy", str(run_dir).encode())
        result = soak(url, key, args, triton, envoy)
    finally:
        runner.send_signal(signal.SIGTERM)
        runner.wait(120)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
    print(f"==> written to {args.out}")
    return 0


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def soak(url: str, key: str, args: argparse.Namespace, triton: int, envoy: int) -> dict:
    stop = threading.Event()
    lock = threading.Lock()
    counts: dict[str, int] = {"requests": 0}

    def client(seed: int) -> None:
        rng = random.Random(seed)
        session = requests.Session()
        while not stop.is_set():
            drop = rng.random() < 0.1
            body = {"text_input": "The list of", "max_tokens": rng.randint(8, 96),
                    "ignore_eos": True, "temperature": rng.choice([0.0, 0.8])}
            outcome = "ok"
            try:
                with session.post(url + "/generate_stream", json=body, stream=True, timeout=120,
                                  headers={"X-API-Key": key}) as reply:
                    if reply.status_code != 200:
                        outcome = f"http_{reply.status_code}"
                    for line in reply.iter_lines(decode_unicode=True):
                        if drop:
                            outcome = "dropped"
                            break
                        if line.startswith("data:") and '"error"' in line:
                            outcome = "error_event"
            except requests.RequestException as exc:
                outcome = type(exc).__name__
            with lock:
                counts["requests"] += 1
                counts[outcome] = counts.get(outcome, 0) + 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True)
               for i in range(args.clients)]
    for thread in threads:
        thread.start()
    samples = []
    start = time.monotonic()
    end = start + args.minutes * 60
    while time.monotonic() < end:
        time.sleep(args.sample_seconds)
        with lock:
            done = counts["requests"]
        samples.append({"t": round(time.monotonic() - start, 1), "requests": done,
                        "rss_mb": rss_by_process(triton, envoy)})
        print(f"\r  {time.monotonic() - start:5.0f} s  {done:6d} requests  "
              f"{sum(samples[-1]['rss_mb'].values()):7.1f} MB total", end="", flush=True)
    stop.set()
    for thread in threads:
        thread.join(130)
    print()
    fitted = [s for s in samples if s["requests"] >= args.warmup_requests]
    growth = {name: round(slope_per_thousand([(s["requests"], s["rss_mb"][name])
                                              for s in fitted if name in s["rss_mb"]]), 3)
              for name in samples[-1]["rss_mb"]}
    return {"minutes": args.minutes, "clients": args.clients, "outcomes": counts,
            "rss_first_mb": {k: round(v, 1) for k, v in samples[0]["rss_mb"].items()},
            "rss_last_mb": {k: round(v, 1) for k, v in samples[-1]["rss_mb"].items()},
            "growth_mb_per_1000_requests": growth, "samples": samples}


if __name__ == "__main__":
    sys.exit(main())
