"""The load generator and the workloads, against a tiny in-process SSE server (no model)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import web

from benchmarks import loadgen, workload

ROOT = Path(__file__).resolve().parents[2]


def spec(index: int = 0, max_tokens: int = 4) -> workload.RequestSpec:
    return workload.RequestSpec(index, "a prompt", 2, max_tokens, seed=index)


async def sse(request: web.Request, events: list[dict]) -> web.StreamResponse:
    reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await reply.prepare(request)
    for event in events:
        await reply.write(f"data: {json.dumps(event)}\n\n".encode())
        await asyncio.sleep(0.001)
    await reply.write_eof()
    return reply


async def per_token(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    n = body["max_tokens"]
    events = [{"text_output": f" t{i}"} for i in range(n - 1)]
    events.append({"text_output": " end", "finish_reason": "length", "num_output_tokens": n,
                   "num_input_tokens": 2})
    return await sse(request, events)


async def one_event(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    return await sse(request, [{"text_output": "whole text", "finish_reason": "length",
                                "num_output_tokens": body["max_tokens"]}])


async def error_mid_stream(request: web.Request) -> web.StreamResponse:
    return await sse(request, [{"text_output": " t0"}, {"error": "generation failed"}])


async def overloaded(request: web.Request) -> web.Response:
    return web.json_response({"error": "busy"}, status=503)


async def slow(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(1.0)
    return await one_event(request)


async def run(handler, specs, concurrency=2, max_seconds=10.0, grace_s=5.0):
    app = web.Application()
    app.router.add_post("/s", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        return await loadgen.run_level(f"http://127.0.0.1:{port}/s", {}, specs, concurrency,
                                       max_seconds, grace_s, "test", "fixed")
    finally:
        await runner.cleanup()


def test_per_token_events_give_ttft_inter_token_latency_and_the_servers_token_count():
    level = asyncio.run(run(per_token, [spec(i, 5) for i in range(4)]))
    stats = level.stats()
    assert (stats["sent"], stats["completed"], stats["errors"]) == (4, 4, {})
    assert stats["output_tokens"] == 20 and stats["streamed_requests"] == 4
    assert all(r.text_events == 5 and r.ttft < r.e2e for r in level.requests)
    assert stats["itl_ms"] is not None and stats["ttft_ms"]["p50"] <= stats["e2e_ms"]["p50"]


def test_one_event_answers_have_ttft_equal_to_end_to_end_and_no_inter_token_latency():
    level = asyncio.run(run(one_event, [spec(i, 7) for i in range(3)]))
    stats = level.stats()
    assert stats["completed"] == 3 and stats["output_tokens"] == 21
    assert stats["itl_ms"] is None and stats["streamed_requests"] == 0


def test_errors_are_counted_by_status_and_kept_out_of_the_latencies():
    stream_error = asyncio.run(run(error_mid_stream, [spec(i) for i in range(2)])).stats()
    assert stream_error["errors"] == {"stream_error": 2} and stream_error["completed"] == 0
    assert stream_error["ttft_ms"] is None
    rejected = asyncio.run(run(overloaded, [spec(i) for i in range(3)])).stats()
    assert rejected["errors"] == {"503": 3}


def test_the_time_bound_stops_new_requests_and_cuts_the_ones_still_running():
    level = asyncio.run(run(slow, [spec(i) for i in range(10)], concurrency=2,
                            max_seconds=0.2, grace_s=0.3))
    stats = level.stats()
    assert (stats["sent"], stats["completed"], stats["unfinished"]) == (2, 0, 2)
    assert stats["errors"] == {}


@pytest.fixture(scope="module")
def prompts(demo_model_dir: Path) -> workload.PromptSource:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    return workload.PromptSource(tokenizer, (demo_model_dir / "heldout.txt").read_text())


def test_workload_prompts_have_exactly_the_wanted_token_counts(prompts):
    for name in ("fixed", "mixed"):
        for item in workload.build(name, 24, prompts, seed=7):
            assert prompts.count(item.prompt) == item.prompt_tokens
            assert item.prompt_tokens + item.max_tokens <= workload.CONTEXT
            assert item.body()["ignore_eos"] is True


def test_workloads_are_reproducible_and_the_mixed_one_is_spread(prompts):
    first = workload.build("mixed", 40, prompts, seed=3)
    assert first == workload.build("mixed", 40, prompts, seed=3)
    assert first != workload.build("mixed", 40, prompts, seed=4)
    outputs = sorted(s.max_tokens for s in first)
    assert outputs[-1] >= 4 * outputs[len(outputs) // 2]  # a heavy tail
    fixed = workload.build("fixed", 5, prompts, seed=3)
    assert {(s.prompt_tokens, s.max_tokens) for s in fixed} == {(64, 64)}
