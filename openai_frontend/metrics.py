"""The frontend's own figures, on its /metrics for Prometheus (monitoring/).

Triton's metrics say what the engine did; these say what the OpenAI layer added on top and
what its clients saw: answers by route and status, error kinds, the time until the answer
starts (the whole answer unstreamed; headers and the first text streamed) and the tokens it
streamed. Each request costs a few counter updates, none per token: a stream's tokens are
counted once per sequence, from its final event.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

# Seconds until an answer starts: first tokens on a busy CPU take seconds, not milliseconds.
FIRST_BYTE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)


class FrontendMetrics:
    """One set per process (its own registry, so tests can hold several apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("llm_openai_requests", "Answers by route and HTTP status.",
                                ["route", "code"], registry=self.registry)
        self.errors = Counter("llm_openai_errors", "Error answers by the contract's error "
                              "type (contracts/errors.py).", ["route", "type"],
                              registry=self.registry)
        self.first_byte = Histogram(
            "llm_openai_time_to_first_byte_seconds",
            "From the request's arrival until its answer starts: the whole answer when not "
            "streamed, the headers with the first text when streamed.", ["route", "stream"],
            buckets=FIRST_BYTE_BUCKETS, registry=self.registry)
        self.streamed_tokens = Counter("llm_openai_streamed_tokens",
                                       "Completion tokens sent in streamed answers.",
                                       ["route"], registry=self.registry)
        self.in_flight = Gauge("llm_openai_requests_in_flight",
                               "Requests being answered now (streams included).",
                               registry=self.registry)

    def exposition(self) -> tuple[bytes, str]:
        """The text format Prometheus scrapes, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
