"""Per-key usage, counted from the gateways' access-log streams (Envoy's gRPC access-log
service, envoy.service.accesslog.v3), for Prometheus.

Why here: every gateway already reaches this service, and it is the one place that sees all
of them, so a key's traffic through several gateways adds up. Why from the access log: Envoy's
own statistics have no per-key dimension, and a 429 never reaches the model. Each answer
arrives with its key id (a header the key filter set), its status and the token counts
gateway/token_budget.lua read from it; never the key, never text. Gateways stream these
whether or not they enforce the shared limits, so usage is counted either way.

Cardinality: key ids are labels, so they are capped (`max_keys`, LLM_USAGE_MAX_KEYS, default
200). The first ids seen keep their own series; the ones after share `key_id="_other"` until
the service restarts (docs/operations.md, Monitoring).
"""

from __future__ import annotations

import logging
from typing import AsyncIterator

import grpc
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from prometheus_client import CollectorRegistry, Counter

from contracts.headers import Header

from .contract import USAGE_METADATA, Usage

LOG = logging.getLogger("ratelimit")
OTHER_KEYS = "_other"
DEFAULT_MAX_KEYS = 200


def outcome(status: int) -> str:
    """An answer's status as the label the rules read: ok, rate_limited, refused, failed."""
    if status == 429:
        return "rate_limited"
    if status >= 500 or status == 0:  # 0: the client left before any answer
        return "failed"
    return "refused" if status >= 400 else "ok"


class KeyUsage(als_pb2_grpc.AccessLogServiceServicer):
    def __init__(self, registry: CollectorRegistry, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self.max_keys = max_keys
        self._keys: set[str] = set()
        self.requests = Counter("llm_gateway_key_requests",
                                "Answers of the gateways by key id and outcome (ok, "
                                "rate_limited, refused, failed).", ["key_id", "outcome"],
                                registry=registry)
        self.tokens = Counter("llm_gateway_key_tokens",
                              "Tokens the gateways' answers reported, by key id and kind "
                              "(prompt, completion).", ["key_id", "kind"], registry=registry)

    async def StreamAccessLogs(
            self, request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage],
            context: grpc.aio.ServicerContext) -> als_pb2.StreamAccessLogsResponse:
        async for message in request_iterator:
            for entry in message.http_logs.log_entry:
                self.count(entry)
        return als_pb2.StreamAccessLogsResponse()

    def count(self, entry: accesslog_pb2.HTTPAccessLogEntry) -> None:
        """One answer: requests by outcome, tokens by kind; nothing without a key id (the
        key filter refused it, or the route needs none)."""
        key = entry.request.request_headers.get(Header.KEY_ID.value, "")
        if not key:
            return
        key = self._label(key)
        self.requests.labels(key, outcome(entry.response.response_code.value)).inc()
        usage = entry.common_properties.metadata.filter_metadata.get(USAGE_METADATA[0])
        if usage is None:
            return
        for kind, name in ((Usage.PROMPT, "prompt"), (Usage.COMPLETION, "completion")):
            value = usage.fields.get(kind.value)
            if value is not None and value.string_value.isdigit():
                self.tokens.labels(key, name).inc(int(value.string_value))

    def _label(self, key: str) -> str:
        if key in self._keys:
            return key
        if len(self._keys) < self.max_keys:
            self._keys.add(key)
            return key
        return OTHER_KEYS
