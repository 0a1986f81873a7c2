"""An asyncio load generator for LLM servers speaking Triton's generate extension or OpenAI's
chat API.

It posts to `generate_stream` (server-sent events), to `generate` (one JSON reply) or to
`/v1/chat/completions` with `stream: true` (chunks, a usage chunk, then `data: [DONE]`).

Closed loop: `concurrency` clients each send a request, read its server-sent events to the end,
then send the next, until the request bound or the time bound of the level is reached. After
the time bound no new request starts; those still running get `grace_s` to finish and are then
cancelled and counted as `unfinished` (never as errors, never in the latencies).

Per request it records the time to the first event that carries text (TTFT), the end-to-end
latency and the output tokens. It works with servers that send one event with the whole text
(then TTFT equals the end-to-end latency and there is no inter-token latency) and with servers
that send one event per token chunk (the final event carries `finish_reason` and
`num_output_tokens`). Every event is checked for `{"error": ...}`: on `generate_stream` an
error after the first event arrives under an HTTP 200.

Definitions (as in genai-perf):
  TTFT                 first text event - request sent
  inter-token latency  (end-to-end - TTFT) / (output tokens - 1), streamed requests only
  output tokens/s      output tokens of finished requests / (last finish - level start)
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

import aiohttp
import numpy as np

from benchmarks.workload import RequestSpec

PERCENTILES = (50, 95, 99)


@dataclass
class RequestResult:
    index: int
    ok: bool
    status: str  # "200", another HTTP status, "stream_error", "unfinished" or an exception name
    start: float
    end: float
    ttft: Optional[float] = None
    output_tokens: int = 0
    prompt_tokens: int = 0
    text_events: int = 0
    error: str = ""

    @property
    def e2e(self) -> float:
        return self.end - self.start

    @property
    def itl(self) -> Optional[float]:
        if self.ttft is None or self.text_events < 2 or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


@dataclass
class LevelResult:
    """Everything measured at one concurrency level of one workload on one system."""

    system: str
    workload: str
    concurrency: int
    duration_s: float
    requests: list[RequestResult] = field(default_factory=list)
    # CPU the load generator itself used (all cores), to tell when the client is the bottleneck
    client_cpu_s: float = 0.0
    wall_s: float = 0.0

    def stats(self) -> dict[str, Any]:
        done = [r for r in self.requests if r.ok]
        errors = Counter(r.status for r in self.requests if not r.ok and r.status != "unfinished")
        out: dict[str, Any] = {
            "system": self.system, "workload": self.workload, "concurrency": self.concurrency,
            "duration_s": round(self.duration_s, 3),
            "sent": len(self.requests), "completed": len(done),
            "unfinished": sum(r.status == "unfinished" for r in self.requests),
            "errors": dict(errors),
            "requests_per_s": len(done) / self.duration_s if self.duration_s > 0 else 0.0,
            "output_tokens_per_s": (sum(r.output_tokens for r in done) / self.duration_s
                                    if self.duration_s > 0 else 0.0),
            "output_tokens": sum(r.output_tokens for r in done),
            "streamed_requests": sum(r.text_events > 1 for r in done),
            "client_cpu_percent": (round(100 * self.client_cpu_s / self.wall_s, 1)
                                   if self.wall_s > 0 else None),
        }
        for name, values in (("ttft_ms", [r.ttft for r in done if r.ttft is not None]),
                             ("itl_ms", [r.itl for r in done if r.itl is not None]),
                             ("e2e_ms", [r.e2e for r in done])):
            out[name] = _distribution(values)
        return out


def _distribution(seconds: Sequence[float]) -> Optional[dict[str, float]]:
    if not seconds:
        return None
    ms = np.asarray(seconds) * 1000.0
    result = {f"p{p}": round(float(np.percentile(ms, p)), 3) for p in PERCENTILES}
    result["mean"] = round(float(ms.mean()), 3)
    return result


def _read(event: dict[str, Any]) -> tuple[str, Optional[int], Optional[int]]:
    """(new text, output tokens, prompt tokens) of one event, in either API's shape."""
    if "choices" in event:  # an OpenAI chunk; the usage chunk has no choices
        choices = event["choices"]
        text = (choices[0].get("delta") or {}).get("content") or choices[0].get("text") or "" \
            if choices else ""
        usage = event.get("usage") or {}
        return text, usage.get("completion_tokens"), usage.get("prompt_tokens")
    return (event.get("text_output") or "", event.get("num_output_tokens"),
            event.get("num_input_tokens"))


async def _one(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
               spec: RequestSpec, body: Callable[[RequestSpec], dict[str, Any]]
               ) -> RequestResult:
    start = time.perf_counter()
    result = RequestResult(spec.index, ok=False, status="", start=start, end=start,
                           prompt_tokens=spec.prompt_tokens)
    counted: Optional[int] = None
    try:
        async with session.post(url, json=body(spec), headers=headers) as reply:
            if reply.status != 200:
                result.status = str(reply.status)
                result.error = (await reply.text())[:300]
                result.end = time.perf_counter()
                return result
            async for event in _events(reply):
                now = time.perf_counter()
                if "error" in event:
                    result.status, result.error = "stream_error", str(event["error"])[:300]
                    result.end = now
                    return result
                text, output_tokens, prompt_tokens = _read(event)
                if text:
                    result.text_events += 1
                    if result.ttft is None:
                        result.ttft = now - start
                if output_tokens is not None:
                    counted = int(output_tokens)
                if prompt_tokens is not None:
                    result.prompt_tokens = int(prompt_tokens)
        result.end = time.perf_counter()
        result.ok, result.status = True, "200"
        # Token count: the server's own; else one token per streamed event; else the request's
        # exact length (ignore_eos makes it exact).
        result.output_tokens = counted if counted is not None else (
            result.text_events if result.text_events > 1 else spec.max_tokens)
        if result.ttft is None:  # no text at all (e.g. max_tokens reached on whitespace)
            result.ttft = result.e2e
    except asyncio.CancelledError:
        result.status, result.end = "unfinished", time.perf_counter()
        raise
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        result.status, result.error = type(exc).__name__, str(exc)[:300]
        result.end = time.perf_counter()
    return result


async def _events(reply: aiohttp.ClientResponse):
    """Yield the JSON events of an SSE body, or the one JSON object of a plain reply."""
    if "text/event-stream" not in reply.headers.get("Content-Type", ""):
        yield json.loads(await reply.text())
        return
    data: list[str] = []
    async for raw in reply.content:
        line = raw.decode("utf-8").rstrip("\r\n")
        if line.startswith("data:"):
            data.append(line[5:].lstrip())
            if data == ["[DONE]"]:  # the OpenAI API's end of stream
                return
        elif not line and data:
            yield json.loads("\n".join(data))
            data = []
    if data:
        yield json.loads("\n".join(data))


async def run_level(url: str, headers: dict[str, str], specs: Sequence[RequestSpec],
                    concurrency: int, max_seconds: float, grace_s: float,
                    system: str, workload: str, progress: Any = None,
                    request_timeout_s: float = 300.0,
                    body: Callable[[RequestSpec], dict[str, Any]] = RequestSpec.body,
                    keep_alive: bool = True) -> LevelResult:
    """Run `specs` (at most) with `concurrency` closed-loop clients; bounded by `max_seconds`."""
    results: list[RequestResult] = []
    cursor = iter(specs)
    cpu_start = time.process_time()
    start = time.perf_counter()
    deadline = start + max_seconds
    in_flight: dict[int, tuple[RequestSpec, float]] = {}

    async def client(session: aiohttp.ClientSession, slot: int) -> None:
        for spec in cursor:
            if time.perf_counter() >= deadline:
                return
            in_flight[slot] = (spec, time.perf_counter())
            result = await _one(session, url, headers, spec, body)
            del in_flight[slot]
            results.append(result)
            if progress is not None:
                progress.update(1)

    timeout = aiohttp.ClientTimeout(total=request_timeout_s)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=not keep_alive)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        tasks = [asyncio.create_task(client(session, i)) for i in range(concurrency)]
        remaining = max(0.0, deadline - time.perf_counter()) + grace_s
        _, pending = await asyncio.wait(tasks, timeout=remaining)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    now = time.perf_counter()
    for spec, sent in in_flight.values():  # cancelled at the deadline
        results.append(RequestResult(spec.index, ok=False, status="unfinished", start=sent,
                                     end=now, prompt_tokens=spec.prompt_tokens))
    finished = [r.end for r in results if r.ok]
    duration = (max(finished) if finished else now) - start
    return LevelResult(system, workload, concurrency, duration,
                       sorted(results, key=lambda r: r.start),
                       client_cpu_s=time.process_time() - cpu_start, wall_s=now - start)


def request_rows(level: LevelResult) -> list[dict[str, Any]]:
    """Raw per-request records for requests.csv (times relative to the level's start)."""
    origin = min((r.start for r in level.requests), default=0.0)
    rows = []
    for r in level.requests:
        row = asdict(r)
        row.update(system=level.system, workload=level.workload,
                   concurrency=level.concurrency, start=round(r.start - origin, 6),
                   end=round(r.end - origin, 6),
                   ttft=None if r.ttft is None else round(r.ttft, 6),
                   e2e=round(r.e2e, 6), itl=None if r.itl is None else round(r.itl, 6))
        rows.append(row)
    return rows
