"""Latency of the same small calls on two or more targets, interleaved call by call so that
every target sees the same machine (this 2-core machine's load drifts: docs/performance.md,
The machine)."""

from __future__ import annotations

import time
from typing import Callable

import requests

Call = Callable[[requests.Session, str], requests.Response]

# Two small calls: model readiness (no model work: the pure proxy cost) and a 1-token generate.
SMALL_CALLS: dict[str, Call] = {
    "ready": lambda s, base: s.get(f"{base}/v2/models/llm/ready", timeout=10),
    "generate_1_token": lambda s, base: s.post(
        f"{base}/v2/models/llm/generate", timeout=30,
        json={"text_input": "The list", "max_tokens": 1}),
}


def latencies_ms(calls: dict[str, Call], targets: dict[str, tuple[requests.Session, str]],
                 count: int) -> dict[str, dict[str, list[float]]]:
    """kind -> target -> `count` latencies in ms; each call must answer 200."""
    out: dict[str, dict[str, list[float]]] = {}
    for kind, call in calls.items():
        times: dict[str, list[float]] = {name: [] for name in targets}
        for _ in range(count):
            for name, (session, base) in targets.items():
                begin = time.perf_counter()
                reply = call(session, base)
                times[name].append((time.perf_counter() - begin) * 1e3)
                if reply.status_code != 200:
                    raise SystemExit(f"{name} {kind}: HTTP {reply.status_code} {reply.text}")
        out[kind] = times
    return out
