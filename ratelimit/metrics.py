"""The rate-limit service's figures, on its /metrics for Prometheus (monitoring/).

What the gateway's own statistics cannot say: which limit refused, and how Redis (where every
gateway's counters live) answers. `llm_ratelimit_redis_up` is the service's view of Redis,
probed every few seconds even when no request comes, so an alert fires before traffic does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LOG = logging.getLogger("ratelimit")
PROBE_INTERVAL_S = 5.0
# Redis answers in well under a millisecond on a healthy network; the service's own timeout
# (store.py) is 0.5 s.
REDIS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
T = TypeVar("T")


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.decisions = Counter(
            "llm_ratelimit_decisions", "Checks of one limit (ratelimit/contract.py's Kind) "
            "and their outcome: ok, or over_limit when that limit was short.",
            ["limit", "decision"], registry=self.registry)
        self.redis_seconds = Histogram("llm_ratelimit_redis_seconds",
                                       "Time of one Redis call (a check, a settlement, a probe).",
                                       ["call"], buckets=REDIS_BUCKETS, registry=self.registry)
        self.redis_errors = Counter("llm_ratelimit_redis_errors",
                                    "Redis calls that failed (unreachable, timed out).",
                                    ["call"], registry=self.registry)
        self.redis_up = Gauge("llm_ratelimit_redis_up",
                              "1 when the last Redis call or probe succeeded.",
                              registry=self.registry)

    def serve(self, host: str, port: int) -> None:
        """/metrics on its own HTTP port, from a thread (the gRPC server keeps the loop)."""
        start_http_server(port, addr=host, registry=self.registry)

    async def timed(self, call: str, work: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis call, recording its time and whether Redis answered."""
        began = time.perf_counter()
        try:
            result = await work()
        except Exception:
            self.redis_errors.labels(call).inc()
            self.redis_up.set(0)
            raise
        self.redis_seconds.labels(call).observe(time.perf_counter() - began)
        self.redis_up.set(1)
        return result

    async def probe(self, ping: Callable[[], Awaitable[bool]]) -> None:
        """Ping Redis forever, every PROBE_INTERVAL_S."""
        while True:
            try:
                await self.timed("ping", ping)
            except Exception as exc:  # recorded by timed(); the service goes on
                LOG.warning("redis probe failed: %s", exc)
            await asyncio.sleep(PROBE_INTERVAL_S)
