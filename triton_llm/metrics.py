"""LLM metrics on Triton's metrics endpoint, named as vLLM names them.

Why vLLM's names: Grafana dashboards and alerts written for vLLM (and the Triton vLLM backend,
which uses the same names) then work unchanged. Two counters vLLM lacks are added under the
`llm:` prefix: cancellations and rejections by reason.

Why a thread of its own: every update is a round trip to Triton's server process. Made on the
engine thread they cost it time on every request (docs/performance.md, Before the C step, and
the changes that led to it), one of them between the first token and its sending. The
engine's hooks only queue what happened; the `llm-metrics` thread makes the updates, in order
and one at a time, which Triton also needs: it crashed when metrics were updated from several
threads at once (Triton 2.51's Python backend). The endpoint lags the engine by that queue,
milliseconds. Triton 24.10's stub keeps the GIL during a round trip (a thread setting a gauge
in a loop slowed a Python loop beside it: docs/performance.md, Figures behind design choices),
so the engine's Python still pauses for them, but its tensor operations run meanwhile and no
token waits for Triton's reply; updates are also kept few (gauges only when they change).
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any, Callable, Optional

import triton_python_backend_utils as pb_utils

from contracts import engine_info
from textgen.core.outputs import EngineObserver, FinishReason, SequenceOutput

LATENCY_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0]
TOKEN_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0]
# Adapters with a series of their own (LLM_METRICS_MAX_ADAPTERS); later ones share `_other`.
MAX_ADAPTER_SERIES = int(os.environ.get("LLM_METRICS_MAX_ADAPTERS", "50"))
OTHER = "_other"


class TritonMetrics(EngineObserver):
    def __init__(self, model_name: str) -> None:
        self._labels = {"model_name": model_name}
        family = pb_utils.MetricFamily
        self._families = {  # referenced for the model's lifetime, or Triton drops them
            name: family(name=name, description=description, kind=kind)
            for name, description, kind in (
                ("vllm:num_requests_running", "Sequences in the running batch", family.GAUGE),
                ("vllm:num_requests_waiting", "Sequences waiting for a slot", family.GAUGE),
                ("vllm:kv_cache_usage_perc", "Share of the KV cache in use (1 = full)",
                 family.GAUGE),
                ("vllm:time_to_first_token_seconds", "Arrival to first token",
                 family.HISTOGRAM),
                ("vllm:time_per_output_token_seconds", "Mean time between output tokens",
                 family.HISTOGRAM),
                ("vllm:e2e_request_latency_seconds", "Arrival to last token",
                 family.HISTOGRAM),
                ("vllm:request_queue_time_seconds", "Arrival to a slot in the batch",
                 family.HISTOGRAM),
                ("vllm:request_prefill_time_seconds", "A slot to the first token (prefill)",
                 family.HISTOGRAM),
                ("vllm:request_decode_time_seconds", "First token to last (decode)",
                 family.HISTOGRAM),
                ("vllm:prompt_tokens_total", "Prompt tokens processed", family.COUNTER),
                ("vllm:generation_tokens_total", "Tokens generated", family.COUNTER),
                ("vllm:request_success_total", "Finished sequences by finish reason",
                 family.COUNTER),
                ("llm:request_cancellations_total", "Sequences dropped because the client "
                                                    "went away", family.COUNTER),
                ("llm:request_rejections_total", "Requests refused, by reason",
                 family.COUNTER),
                (engine_info.NAME, "What the engine chose at load (dtype and why, executor, "
                                   "forward path); always 1", family.GAUGE),
                ("llm:lora_adapters", "LoRA adapters served, and resident in memory, by state",
                 family.GAUGE),
                ("llm:adapter_requests_total", "Finished sequences that ran a LoRA adapter, "
                                               "by adapter", family.COUNTER),
                ("llm:adapter_generation_tokens_total", "Tokens generated with a LoRA "
                                                        "adapter, by adapter", family.COUNTER),
            )}
        self._info: Optional[Any] = None
        self._running = self._metric("vllm:num_requests_running")
        self._waiting = self._metric("vllm:num_requests_waiting")
        self._cache_usage = self._metric("vllm:kv_cache_usage_perc")
        self._ttft = self._metric("vllm:time_to_first_token_seconds", LATENCY_BUCKETS)
        self._tpot = self._metric("vllm:time_per_output_token_seconds", TOKEN_BUCKETS)
        self._e2e = self._metric("vllm:e2e_request_latency_seconds", LATENCY_BUCKETS)
        self._queue_time = self._metric("vllm:request_queue_time_seconds", LATENCY_BUCKETS)
        self._prefill_time = self._metric("vllm:request_prefill_time_seconds", LATENCY_BUCKETS)
        self._decode_time = self._metric("vllm:request_decode_time_seconds", LATENCY_BUCKETS)
        self._prompt_tokens = self._metric("vllm:prompt_tokens_total")
        self._generation_tokens = self._metric("vllm:generation_tokens_total")
        self._cancellations = self._metric("llm:request_cancellations_total")
        self._adapters = {state: self._metric("llm:lora_adapters", state=state)
                          for state in ("served", "resident")}
        self._adapter_series: dict[str, tuple[Any, Any]] = {}
        self._by_label: dict[tuple[str, str], Any] = {}
        # The gauges are reported before every decode step: only changes are queued.
        self._queue_state = (-1, -1)
        self._cache_state = -1.0
        self._updates: queue.SimpleQueue[Optional[tuple[Callable[..., None], tuple[Any, ...]]]] \
            = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._apply, name="llm-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Make the updates still queued, then stop (before the model unloads)."""
        self._updates.put(None)
        self._thread.join(timeout=10)

    def _later(self, update: Callable[..., None], *args: Any) -> None:
        self._updates.put((update, args))

    def _apply(self) -> None:
        while (item := self._updates.get()) is not None:
            update, args = item
            try:
                update(*args)
            except Exception as exc:  # a metric must never stop the ones after it
                pb_utils.Logger.log_warn(f"llm: updating a metric failed: {exc!r}")

    def _metric(self, name: str, buckets: list[float] | None = None, **labels: str) -> Any:
        all_labels = {**self._labels, **labels}
        if buckets is None:
            return self._families[name].Metric(labels=all_labels)
        return self._families[name].Metric(labels=all_labels, buckets=buckets)

    # ---- the engine's hooks (engine and Triton threads): queue only -------------------------

    def on_queue(self, running: int, waiting: int) -> None:
        if (running, waiting) == self._queue_state:
            return
        self._queue_state = (running, waiting)
        self._later(self._running.set, running)
        self._later(self._waiting.set, waiting)

    def on_cache_usage(self, fraction: float) -> None:
        fraction = round(fraction, 2)  # whole percents (by 0.1% it changed nearly every step)
        if fraction == self._cache_state:
            return
        self._cache_state = fraction
        self._later(self._cache_usage.set, fraction)

    def on_first_token(self, seconds: float) -> None:
        self._later(self._ttft.observe, seconds)

    def on_finish(self, output: SequenceOutput) -> None:
        self._later(self._record_finish, output)

    def on_reject(self, reason: str) -> None:
        self._later(self._count, "llm:request_rejections_total", "reason", reason)

    def on_adapters(self, served: int, resident: int) -> None:
        self._later(self._adapters["served"].set, served)
        self._later(self._adapters["resident"].set, resident)

    def on_ready(self, facts: dict[str, Any]) -> None:
        """The engine loaded: publish what it chose (contracts/engine_info.py)."""
        self._later(self._publish_info, facts)

    # ---- on the metrics thread -------------------------------------------------------------

    def _record_finish(self, output: SequenceOutput) -> None:
        self._prompt_tokens.increment(output.prompt_tokens)
        self._generation_tokens.increment(output.completion_tokens)
        if output.finish_reason is FinishReason.CANCELLED:
            self._cancellations.increment(1)
        if output.adapter:
            requests, tokens = self._adapter_metrics(output.adapter)
            requests.increment(1)
            tokens.increment(output.completion_tokens)
        if output.finish_reason.answered:
            self._count("vllm:request_success_total", "finished_reason",
                        output.finish_reason.value)
            self._e2e.observe(output.total_seconds)
            self._queue_time.observe(output.queue_seconds)
            self._prefill_time.observe(output.first_token_seconds - output.queue_seconds)
            self._decode_time.observe(output.total_seconds - output.first_token_seconds)
            if output.completion_tokens > 1:
                self._tpot.observe((output.total_seconds - output.first_token_seconds)
                                   / (output.completion_tokens - 1))

    def _adapter_metrics(self, adapter: str) -> tuple[Any, Any]:
        """The adapter's two series; past MAX_ADAPTER_SERIES adapters, later ones share
        `_other` (the cardinality budget: docs/operations.md, Monitoring)."""
        if adapter not in self._adapter_series and \
                len(self._adapter_series) >= MAX_ADAPTER_SERIES:
            adapter = OTHER
        if adapter not in self._adapter_series:
            self._adapter_series[adapter] = (
                self._metric("llm:adapter_requests_total", adapter=adapter),
                self._metric("llm:adapter_generation_tokens_total", adapter=adapter))
        return self._adapter_series[adapter]

    def _publish_info(self, facts: dict[str, Any]) -> None:
        self._info = self._metric(engine_info.NAME, **engine_info.labels(facts))
        self._info.set(1)

    def _count(self, name: str, label: str, value: str) -> None:
        """Add one to the counter `name` with `label`=`value` (created on first use)."""
        key = (name, value)
        if key not in self._by_label:
            self._by_label[key] = self._metric(name, **{label: value})
        self._by_label[key].increment(1)
