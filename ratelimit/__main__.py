"""Run the rate-limit service: `python -m ratelimit [--port 8081] [--redis URL]`.

Envoy's global rate-limit filter calls it over gRPC (envoy.service.ratelimit.v3); the
gateways also stream it their access logs (envoy.service.accesslog.v3), which it counts per
key for Prometheus. It answers the standard gRPC health check. Limits come from
gateway/tiers.yaml.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path

import grpc
from envoy.service.accesslog.v3 import als_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .contract import metrics_port
from .limits import TIERS_FILE, TierLimits
from .metrics import ServiceMetrics
from .service import RateLimitService
from .store import Store
from .usage import DEFAULT_MAX_KEYS, KeyUsage


async def serve(host: str, port: int, redis_url: str, tiers: Path, metrics_port: int,
                max_keys: int) -> None:
    store = Store(redis_url)
    metrics = ServiceMetrics()
    metrics.serve(host, metrics_port)
    probe = asyncio.create_task(metrics.probe(store.ping))
    server = grpc.aio.server()
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(
        RateLimitService(TierLimits.load(tiers), store, metrics), server)
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(KeyUsage(metrics.registry, max_keys),
                                                        server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    logging.info("rate-limit service on %s:%d (metrics :%d), counters in %s", host, port,
                 metrics_port, redis_url.split("@")[-1])
    try:
        await server.wait_for_termination()
    finally:
        probe.cancel()
        await store.close()


def main() -> None:
    env = os.environ
    parser = argparse.ArgumentParser(prog="python -m ratelimit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=env.get("LLM_RATELIMIT_BIND", "127.0.0.1"),
                        help="address to bind (env LLM_RATELIMIT_BIND; default loopback)")
    parser.add_argument("--port", type=int, default=int(env.get("LLM_RATELIMIT_PORT", "8081")),
                        help="gRPC port (env LLM_RATELIMIT_PORT, default 8081)")
    parser.add_argument("--metrics-port", type=int,
                        default=int(env.get("LLM_RATELIMIT_METRICS_PORT", "0")) or None,
                        help="HTTP port of /metrics for Prometheus (env "
                             "LLM_RATELIMIT_METRICS_PORT; default: the gRPC port + 1)")
    parser.add_argument("--max-keys", type=int,
                        default=int(env.get("LLM_USAGE_MAX_KEYS", str(DEFAULT_MAX_KEYS))),
                        help="key ids with their own per-key usage series; later ones share "
                             "key_id=\"_other\" (env LLM_USAGE_MAX_KEYS)")
    parser.add_argument("--redis", default=env.get("LLM_RATELIMIT_REDIS_URL",
                                                   "redis://127.0.0.1:6379/0"),
                        help="Redis URL (env LLM_RATELIMIT_REDIS_URL)")
    parser.add_argument("--tiers", type=Path, default=Path(env.get("LLM_TIERS_FILE",
                                                                   str(TIERS_FILE))),
                        help="the tiers file (env LLM_TIERS_FILE; default gateway/tiers.yaml)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(args.host, args.port, args.redis, args.tiers,
                      args.metrics_port or metrics_port(args.port), args.max_keys))


if __name__ == "__main__":
    main()
