"""The frontend's own figures, for Prometheus (monitoring/), on a port of their own.

Triton's metrics say what the engine did; these say what the OpenAI layer added on top and
what its clients saw: answers by route and status, error kinds, the time until the answer
starts (the whole answer unstreamed; headers and the first text streamed) and the tokens it
streamed. Each request costs a few counter updates, none per token: a stream's tokens are
counted once per sequence, from its final event.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

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

    def serve(self, host: str, port: int) -> None:
        """/metrics on a port of its own, from a thread beside the server's event loop."""
        start_http_server(port, addr=host, registry=self.registry)
