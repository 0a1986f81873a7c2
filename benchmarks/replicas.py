#!/usr/bin/env python3
"""Replicas, failover and global limits, measured: what a platform team asks before running
more than one replica.

Starts two stacks as `make serve` does (own ports and run dirs under .run/): one with a single
replica, one with two replicas and global limits (Redis + the rate-limit service), plus a
second gateway on the two-replica stack without global limits. Then, round by round:

  failover     streamed load through the gateway while one replica's tritonserver is
               SIGKILLed: requests lost (in flight on it), 503s and other errors seen, how
               long until the gateway stops sending to it (its host leaves the healthy set in
               Envoy's /clusters) and until it is back (the runner restarts it)
  ratelimit    the global rate-limit call's cost: p50 latency of a readiness check (one call)
               and of a 1-token generate (a call on arrival and one when it ends), through the
               gateway with global limits and through the one without, interleaved
  throughput   output tokens/s of the same closed-loop streamed load with one replica and with
               two (on this 2-core machine two engines share the same cores: the figure shows
               what a second replica costs or buys here, not what it buys on its own hardware)

Median of the rounds; every round's figures are printed.

  python benchmarks/replicas.py [--rounds 3] [--seconds 8] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import requests

from benchmarks.interleaved import SMALL_CALLS, latencies_ms
from benchmarks.loadgen import run_level
from benchmarks.workload import RequestSpec
from tools import runtime

ROOT = Path(__file__).resolve().parent.parent

ONE = {"LLM_HTTP_PORT": 18700, "LLM_GRPC_PORT": 18701, "LLM_METRICS_PORT": 18702,
       "LLM_OPENAI_PORT": 18703, "GATEWAY_PORT": 18780, "GATEWAY_ADMIN_PORT": 18790}
TWO = {"LLM_HTTP_PORT": 18800, "LLM_GRPC_PORT": 18801, "LLM_METRICS_PORT": 18802,
       "LLM_OPENAI_PORT": 18803, "GATEWAY_PORT": 18880, "GATEWAY_ADMIN_PORT": 18890,
       "LLM_REDIS_PORT": 18879, "LLM_RATELIMIT_PORT": 18881}
LOCAL_ONLY = {"GATEWAY_PORT": 18980, "GATEWAY_ADMIN_PORT": 18990}
PROMPT = "The list of the built-in functions"


@dataclass
class Stack:
    name: str
    ports: dict[str, int]
    env: dict[str, str]
    runner: subprocess.Popen
    key: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['GATEWAY_PORT']}"


def start(name: str, ports: dict[str, int], command: str = "serve", **extra: str) -> Stack:
    run_dir = runtime.RUN_DIR / "bench-replicas" / name
    env = {**os.environ, "LLM_RUN_DIR": str(run_dir), "LLM_KEYS_DIR": str(run_dir / "keys"),
           "LLM_DRAIN_TIMEOUT_S": "10", **{k: str(v) for k, v in ports.items()}, **extra}
    env.pop("GATEWAY_ACCESS_LOG", None)
    store = runtime.KeyStore(run_dir / "keys")
    key = store.issue("bench", "benchmark")[0]  # a tier whose buckets never interfere
    if not store.active_named("dev"):
        store.issue("dev", "standard")
    run_dir.mkdir(parents=True, exist_ok=True)
    runner = subprocess.Popen([sys.executable, str(ROOT / "tools" / "serve.py"), command],
                              env=env, stdout=(run_dir / f"{command}.log").open("ab"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    return Stack(name, ports, env, runner, key)


def wait_ready(stack: Stack, urls: list[str], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    for url in urls:
        while not _ok(url):
            if stack.runner.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{stack.name} did not start; see its log under "
                                 f"{runtime.RUN_DIR / 'bench-replicas' / stack.name}")
            time.sleep(0.5)


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def stop(stack: Stack) -> None:
    if stack.runner.poll() is None:
        stack.runner.send_signal(signal.SIGTERM)
        try:
            stack.runner.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(stack.runner.pid, signal.SIGKILL)


def specs(count: int, max_tokens: int) -> list[RequestSpec]:
    return [RequestSpec(i, PROMPT, 8, max_tokens, seed=i) for i in range(count)]


def load(stack: Stack, url: str, seconds: float, concurrency: int) -> dict[str, Any]:
    level = asyncio.run(run_level(
        url + "/generate_stream", {"X-API-Key": stack.key}, specs(100_000, 64), concurrency,
        seconds, grace_s=30, system=stack.name, workload="fixed-8+64"))
    stats = level.stats()
    stats["statuses"] = dict(Counter(r.status for r in level.requests))
    return stats


def host_health(admin_port: int, host: str) -> str:
    """Envoy's health flags of one host of the triton_http cluster."""
    text = requests.get(f"http://127.0.0.1:{admin_port}/clusters", timeout=2).text
    for line in text.splitlines():
        if line.startswith(f"triton_http::{host}::health_flags::"):
            return line.rsplit("::", 1)[1]
    return "absent"


def failover(stack: Stack, victim: int, seconds: float, concurrency: int) -> dict[str, Any]:
    http_port = stack.ports["LLM_HTTP_PORT"] + victim * 10
    host = f"127.0.0.1:{http_port}"
    admin = stack.ports["GATEWAY_ADMIN_PORT"]
    timings: dict[str, Optional[float]] = {"left_s": None, "back_s": None}

    def kill_and_watch() -> None:
        time.sleep(seconds / 3)
        pid = runtime.find_process(b"tritonserver", f"--http-port={http_port}".encode())
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        while time.monotonic() - killed < 60:
            healthy = host_health(admin, host) == "healthy"
            if timings["left_s"] is None and not healthy:
                timings["left_s"] = round(time.monotonic() - killed, 3)
            elif timings["left_s"] is not None and healthy:
                timings["back_s"] = round(time.monotonic() - killed, 1)
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_and_watch)
    watcher.start()
    stats = load(stack, stack.url, seconds, concurrency)
    watcher.join()
    statuses = Counter(stats["statuses"])
    return {"victim": victim, "completed": stats["completed"],
            "lost": stats["sent"] - stats["completed"] - statuses["unfinished"],
            "http_503": statuses["503"],
            "errors": {s: n for s, n in statuses.items() if s not in ("200", "unfinished")},
            "traffic_left_after_s": timings["left_s"], "rejoined_after_s": timings["back_s"]}


def ratelimit_cost(stack: Stack, local_url: str, count: int) -> dict[str, float]:
    sessions = {"global": requests.Session(), "local": requests.Session()}
    for session in sessions.values():
        session.headers["X-API-Key"] = stack.key
    bases = {"global": stack.url, "local": local_url}
    out = {}
    measured = latencies_ms(SMALL_CALLS, {side: (sessions[side], bases[side])
                                          for side in sessions}, count)
    for kind, times in measured.items():
        for side, values in times.items():
            out[f"{kind}_{side}_p50_ms"] = round(statistics.median(values), 3)
        out[f"{kind}_added_p50_ms"] = round(out[f"{kind}_global_p50_ms"]
                                            - out[f"{kind}_local_p50_ms"], 3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="per load level")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200,
                        help="per kind and side, per round, for the rate-limit cost")
    args = parser.parse_args()
    one = start("one", ONE)
    two = start("two", TWO, LLM_REPLICAS="2", LLM_GLOBAL_LIMITS="1")
    local: Optional[Stack] = None
    rounds: list[dict[str, Any]] = []
    try:
        print("==> starting a 1-replica stack and a 2-replica stack with global limits",
              flush=True)
        wait_ready(one, [f"{one.url}/readyz"])
        wait_ready(two, [f"http://127.0.0.1:{TWO['LLM_HTTP_PORT'] + 10 * i}/v2/health/ready"
                         for i in range(2)] + [f"{two.url}/readyz"])
        local = start("two", {**TWO, **LOCAL_ONLY}, "gateway", LLM_REPLICAS="2",
                      GATEWAY_GLOBAL_LIMITS="0", GATEWAY_RATELIMIT="")
        local.key = two.key
        local_url = f"http://127.0.0.1:{LOCAL_ONLY['GATEWAY_PORT']}"
        wait_ready(local, [f"{local_url}/readyz"])
        time.sleep(2)
        for number in range(args.rounds):
            figures: dict[str, Any] = {"round": number + 1}
            figures["ratelimit"] = ratelimit_cost(two, local_url, args.requests)
            for name, stack, url in (("one_replica", one, one.url),
                                     ("two_replicas", two, local_url)):
                stats = load(stack, url, args.seconds, args.concurrency)
                figures[name] = {"output_tokens_per_s": round(stats["output_tokens_per_s"]),
                                 "ttft_p50_ms": round(stats["ttft_ms"]["p50"], 1)
                                 if stats.get("ttft_ms") else None,
                                 "statuses": stats["statuses"]}
            figures["failover"] = failover(two, number % 2, args.seconds * 1.5,
                                           args.concurrency)
            print(json.dumps(figures), flush=True)
            rounds.append(figures)
            # The killed replica must be back before the next round measures anything.
            wait_ready(two, [f"http://127.0.0.1:{TWO['LLM_HTTP_PORT'] + 10 * i}/v2/health/ready"
                             for i in range(2)])
            time.sleep(2)
    finally:
        for stack in (local, two, one):
            if stack is not None:
                stop(stack)

    def median(path: tuple[str, str]) -> Optional[float]:
        values = [r[path[0]][path[1]] for r in rounds if r[path[0]][path[1]] is not None]
        return round(statistics.median(values), 3) if values else None

    summary = {f"{a}.{b}": median((a, b)) for a, b in (
        ("one_replica", "output_tokens_per_s"), ("two_replicas", "output_tokens_per_s"),
        ("ratelimit", "ready_added_p50_ms"), ("ratelimit", "generate_1_token_added_p50_ms"),
        ("ratelimit", "ready_local_p50_ms"), ("ratelimit", "generate_1_token_local_p50_ms"),
        ("failover", "lost"), ("failover", "http_503"), ("failover", "traffic_left_after_s"),
        ("failover", "rejoined_after_s"))}
    print("median of rounds:", json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
