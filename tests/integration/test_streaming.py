"""Token streaming, cancellation and metrics on the real Triton, straight and through Envoy."""

from __future__ import annotations

import json
import queue
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient

from tests.harness import (assert_disconnect_cancels, infer_inputs, metric, wait_for_metric,
                           wait_for_metric_above)

BODY = {"text_input": "The list", "max_tokens": 24, "exclude_input_in_output": True}


def sse_events(url: str, body: dict[str, Any], headers: dict[str, str] | None = None
               ) -> list[dict[str, Any]]:
    with requests.post(url, json=body, headers=headers or {}, stream=True, timeout=60) as reply:
        assert reply.status_code == 200, reply.text
        return [json.loads(line[5:]) for line in reply.iter_lines(decode_unicode=True)
                if line.startswith("data:")]


def _grpc_inputs(prompt: str, max_tokens: int, **params: Any) -> list[Any]:
    return infer_inputs(grpcclient, prompt, max_tokens=max_tokens, **params)


# Long enough (ignore_eos) to span at least one stream interval (25 ms by default): ~60 ms at
# the C decode step's speed. A stream is then the first token alone, at least one more piece,
# and the final event; how many pieces come between depends on the engine's speed.
LONG = {**BODY, "max_tokens": 200, "ignore_eos": True}


def test_sse_stream_sends_the_first_token_at_once_then_pieces_that_make_the_unary_text(triton):
    events = sse_events(f"{triton.http_url}/v2/models/llm_stream/generate_stream", LONG)
    unary = requests.post(f"{triton.http_url}/v2/models/llm/generate", json=LONG,
                          timeout=60).json()
    first = requests.post(f"{triton.http_url}/v2/models/llm/generate",
                          json={**LONG, "max_tokens": 1}, timeout=60).json()
    # The first event is the first token alone; later ones carry what the engine made in one
    # stream interval; the last one has the counts and no text.
    assert events[0]["text_output"] == first["text_output"]
    assert len(events) >= 3
    assert "".join(e["text_output"] for e in events) == unary["text_output"]
    final = events[-1]
    assert final["finish_reason"] == unary["finish_reason"]
    assert final["num_output_tokens"] == unary["num_output_tokens"] == 200
    assert final["num_input_tokens"] == unary["num_input_tokens"]
    assert all("finish_reason" not in e for e in events[:-1])


def test_stream_through_the_gateway_uses_the_llm_route(gateway, api_key):
    events = sse_events(gateway.url + "/v2/models/llm/generate_stream", LONG,
                        {"X-API-Key": api_key})
    alias = sse_events(gateway.url + "/generate_stream", LONG, {"X-API-Key": api_key})
    assert len(events) >= 3 and len(alias) >= 3
    assert "".join(e["text_output"] for e in events) == "".join(e["text_output"] for e in alias)
    # The final event: finish reason and token counts (and this run's own timings).
    timings = {"queue_ms", "prefill_ms", "decode_ms"}
    assert timings <= set(events[-1]) and timings <= set(alias[-1])
    assert ({k: v for k, v in events[-1].items() if k not in timings}
            == {k: v for k, v in alias[-1].items() if k not in timings})


def test_grpc_stream_yields_tokens_then_a_final_response(triton, gateway, api_key):
    for target, headers in ((triton.grpc_url, None), (gateway.grpc_url, {"x-api-key": api_key})):
        client = grpcclient.InferenceServerClient(target)
        results: "queue.Queue[Any]" = queue.Queue()
        client.start_stream(callback=lambda result, error: results.put((result, error)),
                            headers=headers)
        # 200 tokens (ignore_eos) span several stream intervals: 12 took less than one on the
        # faster engine, and the first token merged with the rest.
        client.async_stream_infer("llm_stream", _grpc_inputs("The list", 200, ignore_eos=True),
                                  enable_empty_final_response=True)
        pieces = []
        while True:
            result, error = results.get(timeout=30)
            assert error is None, error
            pieces.append(result.as_numpy("text_output").reshape(-1)[0].decode())
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
        client.stop_stream()
        # Text responses (the first token alone, then what each stream interval gathered),
        # then the final response with the counts and no text.
        assert len(pieces) > 2 and pieces[-1] == ""
        assert result.as_numpy("num_output_tokens").reshape(-1)[0] == 200
        unary = grpcclient.InferenceServerClient(triton.grpc_url).infer(
            "llm", _grpc_inputs("The list", 200, ignore_eos=True))
        assert "The list" + "".join(pieces) == unary.as_numpy("text_output")[0][0].decode()


def test_grpc_stream_pieces_carry_their_tokens_logprobs_and_unary_carries_all(triton):
    """tritonclient as a user calls it: `logprobs` in, `token_logprobs` (JSON) out; each
    streamed response holds its own tokens' entries, which together are the unary answer's."""
    inputs = _grpc_inputs("The list", 60, ignore_eos=True, logprobs=2)
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    results: "queue.Queue[Any]" = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    client.async_stream_infer("llm_stream", inputs, enable_empty_final_response=True)
    streamed = []
    while True:
        result, error = results.get(timeout=30)
        assert error is None, error
        streamed += json.loads(result.as_numpy("token_logprobs").reshape(-1)[0])
        if result.get_response().parameters["triton_final_response"].bool_param:
            break
    client.stop_stream()
    unary = client.infer("llm", inputs)
    whole = json.loads(unary.as_numpy("token_logprobs").reshape(-1)[0])
    assert len(whole) == 60 and all(len(entry["top"]) == 2 for entry in whole)
    assert [(e["id"], round(e["logprob"], 4)) for e in streamed] == [
        (e["id"], round(e["logprob"], 4)) for e in whole]
    plain = client.infer("llm", _grpc_inputs("The list", 4))
    assert plain.as_numpy("token_logprobs") is None  # only when asked


def test_n_sequences_stream_with_their_index_and_each_ends_on_its_own(triton):
    """`n`: one request, n sequences; every event names its sequence, each sequence ends
    with an event holding its finish reason and counts, the last flagged final (SSE and
    tritonclient gRPC alike); seeded, sequence i is the request seeded seed + i."""
    body = {**BODY, "max_tokens": 12, "temperature": 1.0, "seed": 5, "ignore_eos": True}
    events = sse_events(f"{triton.http_url}/v2/models/llm_stream/generate_stream",
                        {**body, "n": 3})
    ends = [e for e in events if "finish_reason" in e]
    assert sorted(e["index"] for e in ends) == [0, 1, 2] and events[-1] in ends
    assert all(e["num_output_tokens"] == 12 for e in ends)
    for i in range(3):
        alone = requests.post(f"{triton.http_url}/v2/models/llm/generate",
                              json={**body, "seed": 5 + i}, timeout=60).json()
        assert "".join(e["text_output"] for e in events if e["index"] == i) == \
            alone["text_output"]
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    results: "queue.Queue[Any]" = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    client.async_stream_infer("llm_stream", _grpc_inputs("The list", 6, n=2))
    finals, indexes = 0, set()
    while not finals:
        result, error = results.get(timeout=30)
        assert error is None, error
        indexes.add(int(result.as_numpy("index").reshape(-1)[0]))
        finals += result.get_response().parameters["triton_final_response"].bool_param
    client.stop_stream()
    assert indexes == {0, 1}
    refused = requests.post(f"{triton.http_url}/v2/models/llm/generate",
                            json={**BODY, "n": 2}, timeout=60)
    assert refused.status_code == 400 and "`n` above 1 needs a stream" in refused.text
    whole = requests.post(f"{triton.http_url}/v2/models/llm_stream/generate",
                          json={**BODY, "n": 2, "stream": False}, timeout=60)
    assert whole.status_code == 400 and "`n` above 1 needs `stream` true" in whole.text


def test_stream_false_answers_the_generate_endpoint_in_one_response(triton):
    reply = requests.post(f"{triton.http_url}/v2/models/llm_stream/generate",
                          json={**BODY, "stream": False}, timeout=60)
    unary = requests.post(f"{triton.http_url}/v2/models/llm/generate", json=BODY, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.json()["text_output"] == unary.json()["text_output"]


def test_invalid_stream_request_is_a_400_before_any_event(triton):
    reply = requests.post(f"{triton.http_url}/v2/models/llm_stream/generate_stream",
                          json={"text_input": "hi", "top_p": 2}, timeout=30)
    assert reply.status_code == 400
    assert "`top_p` must be in (0, 1], got 2" in reply.text


def test_closing_an_sse_stream_cancels_the_sequence_and_frees_its_slot(triton, triton_log):
    assert_disconnect_cancels(
        triton, triton_log, f"{triton.http_url}/v2/models/llm_stream/generate_stream",
        lambda request_id: ({"text_input": "The", "max_tokens": 256, "ignore_eos": True,
                             "parameters": {"x-request-id": request_id}}, {}))


def test_grpc_stream_cancel_drops_the_sequence(triton):
    """Cancel a long gRPC stream after its first response: the engine drops it. A generation
    of the demo model may finish before the cancellation reaches the engine; such an attempt
    proves nothing either way and another is made (as assert_disconnect_cancels does)."""
    for _ in range(5):
        before = metric(triton, "llm:request_cancellations_total")
        client = grpcclient.InferenceServerClient(triton.grpc_url)
        first = threading.Event()
        client.start_stream(callback=lambda result, error: first.set())
        flag = grpcclient.InferInput("ignore_eos", [1, 1], "BOOL")
        flag.set_data_from_numpy(np.array([[True]]))
        client.async_stream_infer("llm_stream", _grpc_inputs("The", 500) + [flag])
        assert first.wait(30)
        client.stop_stream(cancel_requests=True)
        wait_for_metric(triton, "vllm:num_requests_running", 0)
        if metric(triton, "llm:request_cancellations_total") == before + 1:
            return
    raise AssertionError("no cancelled gRPC stream was dropped in 5 attempts")


def test_llm_metrics_are_exported_under_vllm_names(triton):
    requests.post(f"{triton.http_url}/v2/models/llm/generate", json=BODY, timeout=60)
    wait_for_metric_above(triton, "vllm:request_success_total", 0)
    text = requests.get(f"http://{triton.host}:{triton.metrics_port}/metrics", timeout=5).text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:time_to_first_token_seconds_bucket",
                 "vllm:time_per_output_token_seconds_bucket",
                 "vllm:e2e_request_latency_seconds_bucket", "vllm:prompt_tokens_total",
                 "vllm:request_queue_time_seconds_bucket",
                 "vllm:request_prefill_time_seconds_bucket",
                 "vllm:request_decode_time_seconds_bucket",
                 "vllm:generation_tokens_total", "vllm:request_success_total",
                 "llm:request_cancellations_total"):
        assert f"\n{name}{{" in text, name
    requests.post(f"{triton.http_url}/v2/models/llm/generate",
                  json={"text_input": "hi", "max_tokens": 0}, timeout=30)
    wait_for_metric_above(triton, "llm:request_rejections_total", 0)


def test_queue_prefill_and_decode_times_split_each_requests_latency(triton):
    parts = ("vllm:request_queue_time_seconds", "vllm:request_prefill_time_seconds",
             "vllm:request_decode_time_seconds")

    def sums() -> dict[str, float]:
        return {name: metric(triton, name + "_sum")
                for name in (*parts, "vllm:e2e_request_latency_seconds")}

    wait_for_metric(triton, "vllm:num_requests_running", 0)
    before = metric(triton, "vllm:e2e_request_latency_seconds_count")
    start = sums()
    reply = requests.post(f"{triton.http_url}/v2/models/llm/generate",
                          json={**BODY, "max_tokens": 8}, timeout=60)
    assert reply.status_code == 200, reply.text
    wait_for_metric(triton, "vllm:request_decode_time_seconds_count", before + 1)
    grown = {name: value - start[name] for name, value in sums().items()}
    assert all(grown[name] >= 0 for name in parts), grown
    assert grown["vllm:request_decode_time_seconds"] > 0
    assert sum(grown[name] for name in parts) == pytest.approx(
        grown["vllm:e2e_request_latency_seconds"], rel=1e-6, abs=1e-6)


def test_hundreds_of_mixed_requests_with_random_disconnects_leave_nothing_behind(triton):
    rng = random.Random(7)
    plans = [(rng.choice(["unary", "stream", "drop"]), rng.randint(1, 40)) for _ in range(240)]

    def run(plan: tuple[str, int]) -> str:
        kind, tokens = plan
        body = {"text_input": "The list of", "max_tokens": tokens, "ignore_eos": True,
                "temperature": rng.choice([0.0, 0.8])}
        if kind == "unary":
            reply = requests.post(f"{triton.http_url}/v2/models/llm/generate", json=body,
                                  timeout=120)
            return "done" if reply.json()["num_output_tokens"] == tokens else "wrong"
        with requests.post(f"{triton.http_url}/v2/models/llm_stream/generate_stream",
                           json={**body, "max_tokens": 200 if kind == "drop" else tokens},
                           stream=True, timeout=120) as reply:
            events = reply.iter_lines(decode_unicode=True)
            if kind == "drop":
                next(events)
                return "dropped"
            last = [json.loads(e[5:]) for e in events if e.startswith("data:")][-1]
            return "done" if last["num_output_tokens"] == tokens else "wrong"

    with ThreadPoolExecutor(24) as pool:
        outcomes = list(pool.map(run, plans))
    assert "wrong" not in outcomes
    assert outcomes.count("done") + outcomes.count("dropped") == len(plans)
    wait_for_metric(triton, "vllm:num_requests_running", 0, timeout=30)
    wait_for_metric(triton, "vllm:num_requests_waiting", 0)
