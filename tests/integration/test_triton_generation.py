"""The `llm` model on a real tritonserver, through tritonclient HTTP/gRPC and the generate API."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.harness import infer_inputs, model_log_records

PROMPTS = ["The list", "A function is", "Python is a programming language",
           "The module provides", "Exceptions are"]


def http_generate(url: str, prompt: Any, **params: Any) -> dict[str, Any]:
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    result = client.infer("llm", infer_inputs(httpclient, prompt, **params))
    return _decode(result)


def _decode(result: Any) -> dict[str, Any]:
    return {"text": result.as_numpy("text_output")[0][0].decode(),
            "finish_reason": result.as_numpy("finish_reason")[0][0].decode(),
            "prompt_tokens": int(result.as_numpy("num_input_tokens")[0][0]),
            "completion_tokens": int(result.as_numpy("num_output_tokens")[0][0])}


def generate_json(url: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{url}/v2/models/llm/generate", json=body, timeout=60)


def inference_count(url: str) -> tuple[int, int]:
    stats = requests.get(f"{url}/v2/models/llm/stats", timeout=5).json()
    model = stats["model_stats"][0]
    return model["inference_count"], model["execution_count"]


def test_generate_endpoint_returns_english_text(triton):
    reply = generate_json(triton.http_url, {"text_input": "The list", "max_tokens": 24,
                                            "exclude_input_in_output": True})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["finish_reason"] in ("stop", "length")
    assert body["num_output_tokens"] >= 1
    words = [w for w in body["text_output"].split() if w.isalpha()]
    assert len(words) >= 3, body  # recognisable words, not punctuation soup


def test_http_infer_includes_prompt_unless_excluded(triton):
    full = http_generate(triton.http_url, "The list", max_tokens=8)
    bare = http_generate(triton.http_url, "The list", max_tokens=8, exclude_input_in_output=True)
    assert full["text"] == "The list" + bare["text"]
    assert full["prompt_tokens"] == bare["prompt_tokens"] > 0


def test_grpc_infer_matches_http_infer_for_greedy(triton):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    result = _decode(client.infer("llm", infer_inputs(grpcclient, "A function is", max_tokens=12)))
    assert result == http_generate(triton.http_url, "A function is", max_tokens=12)


def test_max_tokens_is_honoured_exactly_with_ignore_eos(triton):
    result = http_generate(triton.http_url, "The", max_tokens=17, ignore_eos=True)
    assert result["completion_tokens"] == 17
    assert result["finish_reason"] == "length"


def test_stop_string_cuts_the_text_before_it(triton):
    free = http_generate(triton.http_url, "The list", max_tokens=40, ignore_eos=True,
                         exclude_input_in_output=True)["text"]
    stop = free.split()[2]  # a word the model does write
    cut = http_generate(triton.http_url, "The list", max_tokens=40, ignore_eos=True,
                        exclude_input_in_output=True, stop=[stop])
    assert cut["finish_reason"] == "stop"
    assert cut["text"] == free[:free.index(stop)]


def _concurrently(calls: list[Any]) -> list[Any]:
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def test_greedy_output_is_identical_alone_and_in_a_batch(triton):
    alone = [http_generate(triton.http_url, p, max_tokens=20) for p in PROMPTS]
    together = _concurrently([
        (lambda p=p, i=i: http_generate(triton.http_url, p, max_tokens=20)
         if i % 2 == 0 else http_generate(triton.http_url, p, max_tokens=20,
                                          temperature=1.5, seed=i))
        for i, p in enumerate(PROMPTS * 2)])
    for i, prompt in enumerate(PROMPTS * 2):
        if i % 2 == 0:
            assert together[i] == alone[PROMPTS.index(prompt)], prompt


def test_seeded_sampling_is_reproducible_whatever_the_batch(triton):
    def sampled() -> dict[str, Any]:
        return http_generate(triton.http_url, "The module", max_tokens=24, temperature=0.9,
                             top_p=0.95, top_k=50, seed=1234)

    alone = sampled()
    mixed = _concurrently([sampled] + [
        (lambda p=p: http_generate(triton.http_url, p, max_tokens=30)) for p in PROMPTS])
    assert mixed[0] == alone


def test_each_request_keeps_its_own_max_tokens_in_a_shared_batch(triton):
    sizes = [3, 9, 27, 5, 14, 1]
    results = _concurrently([
        (lambda n=n: http_generate(triton.http_url, "The", max_tokens=n, ignore_eos=True))
        for n in sizes])
    assert [r["completion_tokens"] for r in results] == sizes


def test_dynamic_batching_forms_batches_under_concurrency(triton):
    before_inferences, before_executions = inference_count(triton.http_url)
    _concurrently([(lambda p=p: http_generate(triton.http_url, p, max_tokens=4))
                   for p in PROMPTS * 4])
    inferences, executions = inference_count(triton.http_url)
    assert inferences - before_inferences == 20
    assert executions - before_executions < 20


INVALID = [
    ({"text_input": ""}, "`text_input` must not be empty"),
    ({"text_input": "hi", "max_tokens": -1}, "`max_tokens` must be in [1, 512], got -1"),
    ({"text_input": "hi", "max_tokens": 100000}, "`max_tokens` must be in [1, 512]"),
    ({"text_input": "hi", "temperature": 3.5}, "`temperature` must be in [0, 2], got 3.5"),
    ({"text_input": "hi", "top_p": 0}, "`top_p` must be in (0, 1], got 0"),
    ({"text_input": "word " * 600}, "`text_input` has"),
    ({"text_input": "hi", "stop": [""]}, "`stop` strings must have 1 to 128 characters"),
]


@pytest.mark.parametrize("body,message", INVALID, ids=[m for _, m in INVALID])
def test_invalid_generate_request_gets_400_naming_the_parameter(triton, body, message):
    reply = generate_json(triton.http_url, body)
    assert reply.status_code == 400, reply.text
    assert message in reply.json()["error"]


def test_nan_temperature_is_rejected_over_grpc(triton):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        client.infer("llm", infer_inputs(grpcclient, "hi", temperature=float("nan")))
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "`temperature` must be a finite number, got nan" in info.value.message()


def test_prompt_longer_than_the_context_names_both_numbers(triton):
    reply = generate_json(triton.http_url, {"text_input": "The list of " * 100,
                                            "max_tokens": 256})
    assert reply.status_code == 400
    assert "context" in reply.json()["error"] and "512" in reply.json()["error"]


def test_invalid_requests_fail_alone_while_batch_neighbours_succeed(triton):
    bad: list[tuple[Any, dict[str, Any]]] = [
        (b"\xff\xfe not utf-8", {}), ("hi", {"temperature": float("inf")}),
        ("", {}), ("hi", {"max_tokens": 0})]
    good = [(p, {"max_tokens": 6}) for p in PROMPTS]
    calls = [(lambda p=p, kw=kw: _try(triton.http_url, p, **kw)) for p, kw in bad + good]
    before = inference_count(triton.http_url)[1]
    results = _concurrently(calls)
    assert inference_count(triton.http_url)[1] - before < len(calls)  # they shared batches
    for error, _ in results[:len(bad)]:
        assert error is not None and error.status() == "400"
    assert "valid UTF-8" in results[0][0].message()
    for error, result in results[len(bad):]:
        assert error is None and result["completion_tokens"] >= 1


def _try(url: str, prompt: Any, **params: Any) -> tuple[Optional[InferenceServerException],
                                                        Optional[dict[str, Any]]]:
    try:
        return None, http_generate(url, prompt, **params)
    except InferenceServerException as exc:
        return exc, None


def test_shape_without_batch_dimension_is_a_client_error(triton):
    reply = requests.post(f"{triton.http_url}/v2/models/llm/infer", timeout=10, json={
        "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["x"]}]})
    assert reply.status_code == 400
    assert "batch dimension" in reply.json()["error"]


def test_model_log_has_metadata_but_no_prompt_text(triton, triton_log):
    secret = "Zanzibar quokka marmalade"
    http_generate(triton.http_url, secret, max_tokens=4)
    lines = model_log_records(triton_log)
    assert lines and {"request_id", "prompt_tokens", "completion_tokens", "finish_reason",
                      "queue_ms", "total_ms", "status"} <= set(lines[-1])
    assert secret not in triton_log.read_text(errors="replace")
