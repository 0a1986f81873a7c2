"""The behaviour every engine promises, run against each: `transformers` and `vllm`.

Each engine gets its own real Triton (LLM_ENGINE=...) behind its own real Envoy, with small
admission limits so that a burst fills the queue, serving the demo model's two LoRA adapters.
Nothing here depends on an engine's numerics: the same request gives the same text within one
engine, never across engines (the adapters' answers are held to PEFT's float32 model). The vLLM half
needs .venv-vllm (`make vllm`, a prerequisite of `make test`).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from contracts.adapters import ADMIN_TIER, MODEL as ADAPTERS_MODEL
from tests.harness import (assert_disconnect_cancels, assert_error_contract, infer_inputs,
                           model_log_records, wait_for_metric, wait_for_metric_above)
from tools import runtime
from tools.processes import ROOT, gateway_process, http_ok, triton_process, triton_settings

pytestmark = pytest.mark.slow

MAX_NUM_SEQS = 2
MAX_QUEUE_SIZE = 2
# Appears in prompts only, so finding it in a log means a prompt was logged.
SECRET = "zebra-marmalade-7731"
ADAPTERS = {name: ROOT / "demo_model" / "adapters" / name for name in ("notice", "tutorial")}


@dataclass(frozen=True)
class EngineStack:
    engine: str
    triton: runtime.Settings
    gateway_url: str
    gateway_grpc: str
    access_log: Path
    key: str
    admin_key: str

    @property
    def triton_log(self) -> Path:
        return self.triton.run_dir / "tritonserver.log"

    def generate(self, body: dict[str, Any]) -> requests.Response:
        return requests.post(f"{self.gateway_url}/generate", json=body,
                             headers={"X-API-Key": self.key}, timeout=120)

    def stream(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        with requests.post(f"{self.gateway_url}/generate_stream", json=body, stream=True,
                           headers={"X-API-Key": self.key}, timeout=120) as reply:
            assert reply.status_code == 200, reply.text
            return [json.loads(line[5:]) for line in reply.iter_lines(decode_unicode=True)
                    if line.startswith("data:")]


@pytest.fixture(scope="module", params=["transformers", "vllm"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[EngineStack]:
    engine = request.param
    run_dir = tmp_path_factory.mktemp(f"engine-{engine}")
    settings = triton_settings(run_dir)
    # float32: the suite compares scores with float32 HF on CPUs with and without bfloat16.
    triton = triton_process(settings, LLM_ENGINE=engine, LLM_MAX_NUM_SEQS=str(MAX_NUM_SEQS),
                            LLM_MAX_QUEUE_SIZE=str(MAX_QUEUE_SIZE), LLM_DTYPE="float32",
                            LLM_MAX_LORAS="1",  # adapters take turns: some requests wait
                            LLM_LORA_ADAPTERS=",".join(f"{name}={path}"
                                                       for name, path in ADAPTERS.items()))
    envoy, gateway = gateway_process(settings)
    triton.start()
    try:
        # vLLM compiles its model on a first start (~25 s, cached in ~/.cache/vllm after).
        triton.wait_until(lambda: http_ok(f"{settings.http_url}/v2/models/llm/ready"),
                          timeout=300)
        envoy.start()
        url = f"http://{gateway.host}:{gateway.port}"
        envoy.wait_until(lambda: http_ok(f"{url}/readyz"), timeout=30)
        key, _ = runtime.KeyStore(gateway.keys_dir).issue(f"engine-{engine}", "benchmark")
        admin_key, _ = runtime.KeyStore(gateway.keys_dir).issue(f"admin-{engine}", ADMIN_TIER)
        deadline = time.monotonic() + 20
        while requests.get(f"{url}/v2/models/llm/ready", headers={"X-API-Key": key},
                           timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "the gateway never accepted the new key"
            time.sleep(0.1)
        yield EngineStack(engine, settings, url, f"{gateway.host}:{gateway.port}",
                          Path(gateway.access_log), key, admin_key)
    finally:
        envoy.stop()
        triton.stop()


def test_the_engine_named_by_llm_engine_serves_the_model(stack):
    ready = [r for r in stack.triton_log.read_text().splitlines() if "llm: engine ready" in r]
    assert ready and f'\\"engine\\": \\"{stack.engine}\\"' in ready[-1], ready


def test_an_invalid_request_is_a_400_naming_the_parameter(stack):
    reply = stack.generate({"text_input": "hi", "max_tokens": 2000})
    body = assert_error_contract(reply, 400, "invalid_request")
    assert "`max_tokens` must be in [1, 512], got 2000" in body["error"]
    too_long = stack.generate({"text_input": "word " * 600, "max_tokens": 8})
    assert_error_contract(too_long, 400, "invalid_request")


def test_the_stream_carries_the_unary_text_and_counts(stack):
    body = {"text_input": "The list", "max_tokens": 40, "ignore_eos": True,
            "exclude_input_in_output": True}
    unary = stack.generate(body).json()
    events = stack.stream(body)
    assert "".join(e["text_output"] for e in events) == unary["text_output"]
    assert events[-1]["finish_reason"] == unary["finish_reason"] == "length"
    assert events[-1]["num_output_tokens"] == unary["num_output_tokens"] == 40
    assert events[-1]["num_input_tokens"] == unary["num_input_tokens"] > 0


def test_unary_text_starts_with_the_prompt_unless_excluded(stack):
    reply = stack.generate({"text_input": "The list", "max_tokens": 4}).json()
    assert reply["text_output"].startswith("The list")


def test_grpc_stream_through_the_gateway_ends_with_a_final_response(stack):
    client = grpcclient.InferenceServerClient(stack.gateway_grpc)
    results: "queue.Queue[Any]" = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)),
                        headers={"x-api-key": stack.key})
    client.async_stream_infer("llm_stream", infer_inputs(grpcclient, "The list",
                                                         max_tokens=12, ignore_eos=True),
                              enable_empty_final_response=True)
    counts = None
    while True:
        result, error = results.get(timeout=60)
        assert error is None, error
        if result.get_response().parameters["triton_final_response"].bool_param:
            counts = result.as_numpy("num_output_tokens")
            break
    client.stop_stream()
    assert counts is not None and int(counts.reshape(-1)[0]) == 12


def test_a_stop_string_ends_the_text_before_it(stack):
    body = {"text_input": "The list", "max_tokens": 40, "ignore_eos": True,
            "exclude_input_in_output": True}
    free = stack.generate(body).json()["text_output"]
    stop = free[len(free) // 2:len(free) // 2 + 3]
    assert stop.strip(), f"pick a visible stop string from {free!r}"
    stopped = stack.generate({**body, "stop": [stop]}).json()
    assert stopped["finish_reason"] == "stop"
    assert stopped["text_output"] == free[:free.index(stop)]


def test_a_seeded_sampled_request_is_reproducible(stack):
    body = {"text_input": "Once upon a time", "max_tokens": 24, "temperature": 1.0,
            "top_p": 0.95, "top_k": 50, "ignore_eos": True, "exclude_input_in_output": True}
    first = stack.generate({**body, "seed": 1234}).json()["text_output"]
    again = stack.generate({**body, "seed": 1234}).json()["text_output"]
    others = {stack.generate({**body, "seed": seed}).json()["text_output"]
              for seed in (1, 2, 3)}
    assert first == again
    assert len(others | {first}) > 1, "different seeds all gave the same text"


def test_closing_a_stream_cancels_the_sequence_and_frees_its_slot(stack):
    assert_disconnect_cancels(
        stack.triton, stack.triton_log,
        f"{stack.triton.http_url}/v2/models/llm_stream/generate_stream",
        lambda request_id: ({"text_input": "The", "max_tokens": 256, "ignore_eos": True,
                             "parameters": {"x-request-id": request_id}}, {}))


def test_a_burst_beyond_slots_and_queue_is_refused_with_503_and_retry_after(stack):
    body = {"text_input": "The list", "max_tokens": 256, "ignore_eos": True}
    burst = 3 * (MAX_NUM_SEQS + MAX_QUEUE_SIZE)
    with ThreadPoolExecutor(burst) as pool:
        replies = list(pool.map(lambda _: stack.generate(body), range(burst)))
    refused = [r for r in replies if r.status_code == 503]
    served = [r for r in replies if r.status_code == 200]
    assert len(refused) + len(served) == burst, [r.status_code for r in replies]
    assert refused and len(served) >= MAX_NUM_SEQS + MAX_QUEUE_SIZE
    assert_error_contract(refused[0], 503, "overloaded")
    assert int(refused[0].headers["retry-after"]) >= 1
    assert "at capacity" in refused[0].json()["error"]
    assert all(r.json()["num_output_tokens"] == 256 for r in served)


def test_metrics_are_published_under_the_same_names(stack):
    stack.generate({"text_input": "The list", "max_tokens": 8})
    for name in ("vllm:prompt_tokens_total", "vllm:generation_tokens_total",
                 "vllm:time_to_first_token_seconds_count",
                 "vllm:e2e_request_latency_seconds_count", "vllm:request_success_total"):
        wait_for_metric_above(stack.triton, name, 0)
    wait_for_metric(stack.triton, "vllm:num_requests_running", 0)
    text = requests.get(f"http://{stack.triton.host}:{stack.triton.metrics_port}/metrics",
                        timeout=5).text
    assert 'vllm:kv_cache_usage_perc{model_name="llm"' in text


def test_the_logs_record_each_request_without_its_text_or_the_key(stack):
    reply = stack.generate({"text_input": f"Tell me about {SECRET}", "max_tokens": 8})
    assert reply.status_code == 200, reply.text
    request_id = reply.headers["x-request-id"]
    record = next(r for r in model_log_records(stack.triton_log)
                  if r["request_id"] == request_id)
    assert record["finish_reason"] in ("stop", "length") and record["prompt_tokens"] > 0
    deadline = time.monotonic() + 5  # Envoy flushes its access log every 500 ms
    while f'"request_id":"{request_id}"' not in stack.access_log.read_text():
        assert time.monotonic() < deadline, "the request never reached the access log"
        time.sleep(0.1)
    for log in (stack.triton_log, stack.access_log):
        text = log.read_text(errors="replace")
        assert SECRET not in text and stack.key not in text, log


def test_logit_bias_min_tokens_and_penalties_are_served_per_request(stack):
    """The sampling controls reach either engine through the gateway, each in its own
    request: a +100 bias makes every token that one, min_tokens lets the text run past a stop
    string it meets early, and a penalty changes a repetitive greedy answer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(runtime.DEMO_MODEL)
    the = tokenizer.encode(" the")[0]
    base = {"text_input": "The list", "max_tokens": 24, "exclude_input_in_output": True}

    def text(**fields: Any) -> str:
        reply = stack.generate({**base, **fields})
        assert reply.status_code == 200, reply.text
        return reply.json()["text_output"]

    plain = text()
    assert text(max_tokens=5, logit_bias=json.dumps({str(the): 100})) == \
        tokenizer.decode([the] * 5)
    assert text(stop=["module"]).strip() == ""
    assert "module" in text(stop=["module"], min_tokens=4)
    assert text(frequency_penalty=2.0) != plain
    assert text(repetition_penalty=2.0) != plain


@pytest.mark.parametrize("field,value", [
    ("logit_bias", json.dumps({"999999": 5})), ("presence_penalty", 2.5),
    ("repetition_penalty", 0), ("min_tokens", 25)])
def test_sampling_controls_out_of_range_are_a_400_naming_the_field(stack, field, value):
    reply = stack.generate({"text_input": "The list", "max_tokens": 24, field: value})
    body = assert_error_contract(reply, 400, "invalid_request")
    assert f"`{field}`" in body["error"]


def test_logprobs_and_prompt_logprobs_are_the_models_own(stack):
    """Each engine scores tokens with the model's distribution: the streamed and the unary
    token logprobs agree, and the prompt's equal the HF module's log-softmax (float32), with
    max_tokens 0 scoring the prompt alone."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompt = "Python is a programming language"
    ids = AutoTokenizer.from_pretrained(runtime.DEMO_MODEL).encode(prompt)
    model = AutoModelForCausalLM.from_pretrained(runtime.DEMO_MODEL).eval()
    with torch.inference_mode():
        expected = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    reply = stack.generate({"text_input": prompt, "max_tokens": 0, "prompt_logprobs": 3})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    scored = json.loads(body["prompt_token_logprobs"])
    assert (body["num_output_tokens"], len(scored), scored[0]) == (0, len(ids), None)
    for t in range(1, len(ids)):
        assert scored[t]["id"] == ids[t]
        assert scored[t]["logprob"] == pytest.approx(expected[t - 1, ids[t]].item(), abs=1e-3)
        assert [c["id"] for c in scored[t]["top"]] == \
            torch.topk(expected[t - 1], 3).indices.tolist()
    request = {"text_input": prompt, "max_tokens": 8, "logprobs": 1, "ignore_eos": True}
    unary = json.loads(stack.generate(request).json()["token_logprobs"])
    streamed = [entry for event in stack.stream(request)
                for entry in json.loads(event.get("token_logprobs", "[]"))]
    assert len(unary) == 8 and [e["id"] for e in streamed] == [e["id"] for e in unary]
    assert unary[0]["logprob"] == pytest.approx(expected[-1].max().item(), abs=1e-3)


def test_a_prompt_of_token_ids_runs_as_its_text_does(stack):
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(runtime.DEMO_MODEL).encode("The list")
    request = {"max_tokens": 12, "exclude_input_in_output": True}
    as_text = stack.generate({**request, "text_input": "The list"})
    as_ids = stack.generate({**request, "text_input": " ", "input_ids": ids})
    assert as_ids.status_code == 200, as_ids.text
    assert as_ids.json()["text_output"] == as_text.json()["text_output"]
    assert as_ids.json()["num_input_tokens"] == len(ids)
    body = assert_error_contract(stack.generate({**request, "text_input": "x",
                                                 "input_ids": [10**6]}), 400, "invalid_request")
    assert "`input_ids`" in body["error"]


def test_n_sequences_stream_each_with_its_index_and_its_own_end(stack):
    events = stack.stream({"text_input": "The list", "max_tokens": 10, "n": MAX_NUM_SEQS,
                           "temperature": 1.0, "seed": 11, "ignore_eos": True})
    ends = [e for e in events if "finish_reason" in e]
    assert sorted(e["index"] for e in ends) == [0, 1] and events[-1] in ends
    assert all(e["num_output_tokens"] == 10 for e in ends)
    texts = {i: "".join(e["text_output"] for e in events if e["index"] == i) for i in range(2)}
    assert all(texts.values()) and len(set(texts.values())) > 1  # sampled apart
    reply = stack.generate({"text_input": "The list", "max_tokens": 4, "n": 2})
    assert_error_contract(reply, 400, "invalid_request")


def pefts_greedy_text(adapter: str, prompt: str, tokens: int) -> str:
    """What the base model, with `adapter` merged into it by PEFT, writes greedily."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(runtime.DEMO_MODEL)
    model = AutoModelForCausalLM.from_pretrained(runtime.DEMO_MODEL, dtype=torch.float32)
    if adapter:
        model = PeftModel.from_pretrained(model, ADAPTERS[adapter]).merge_and_unload()
    ids = torch.tensor([tokenizer.encode(prompt)])
    out = model.eval().generate(ids, max_new_tokens=tokens, min_new_tokens=tokens,
                                do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1]:])


def test_each_adapter_answers_as_pefts_merged_model_in_a_batch_with_base_rows(stack):
    """Base rows and rows of each adapter in one batch: each gets what PEFT's merged model
    writes (vLLM's CPU products once gave base rows an adapter's delta: see the vLLM engine's
    SPARE_CPU_LORA_SLOTS)."""
    names = ["", "notice", "tutorial"]
    expected = {name: pefts_greedy_text(name, "The list", 12) for name in names}
    assert len(set(expected.values())) == 3
    body = {"text_input": "The list", "max_tokens": 12, "ignore_eos": True,
            "exclude_input_in_output": True}
    # Two run at once (MAX_NUM_SEQS), the third waits for a slot and, with LLM_MAX_LORAS=1,
    # for the other adapter's request to end.
    with ThreadPoolExecutor(len(names)) as pool:
        replies = list(pool.map(lambda name: stack.generate({**body, "adapter": name}), names))
    assert [r.json().get("text_output", r.text) for r in replies] == \
        [expected[n] for n in names]


def test_an_unknown_adapter_is_a_404_naming_those_served(stack):
    reply = stack.generate({"text_input": "The list", "max_tokens": 4, "adapter": "nope"})
    body = assert_error_contract(reply, 404, "not_found")
    assert "`notice`" in body["error"] and "`tutorial`" in body["error"]


def manage_adapters(stack: EngineStack, action: str, name: str, path: str = "") -> list[str]:
    """The operator's command to the `llm_adapters` model over gRPC through the gateway;
    the names served after it."""
    client = grpcclient.InferenceServerClient(stack.gateway_grpc)
    inputs = []
    for tensor, value in (("action", action), ("name", name), ("path", path)):
        if value:
            inputs.append(grpcclient.InferInput(tensor, [1], "BYTES"))
            inputs[-1].set_data_from_numpy(np.array([value.encode()], dtype=object))
    result = client.infer(ADAPTERS_MODEL, inputs, headers={"x-api-key": stack.admin_key})
    served = json.loads(result.as_numpy("adapters")[0])["adapters"]
    return [adapter["name"] for adapter in served]


def test_an_adapter_unloaded_while_a_stream_runs_on_it_finishes_it_then_loads_again(stack):
    body = {"text_input": "The list", "max_tokens": 400, "ignore_eos": True,
            "adapter": "tutorial"}
    started = threading.Event()

    def stream() -> dict[str, Any]:
        with requests.post(f"{stack.gateway_url}/generate_stream", json=body, stream=True,
                           headers={"X-API-Key": stack.key}, timeout=120) as reply:
            events = []
            for line in reply.iter_lines(decode_unicode=True):
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
                    started.set()
        return events[-1]

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(stream)
        assert started.wait(60)
        assert manage_adapters(stack, "unload", "tutorial") == ["notice"]
        last = running.result(timeout=120)
    assert (last["finish_reason"], last["num_output_tokens"]) == ("length", 400)
    assert stack.generate({**body, "max_tokens": 4}).status_code == 404
    with pytest.raises(InferenceServerException, match="has no adapter_config.json"):
        manage_adapters(stack, "load", "broken", str(ROOT / "demo_model"))
    assert manage_adapters(stack, "load", "tutorial", str(ADAPTERS["tutorial"])) == \
        ["notice", "tutorial"]
    again = stack.generate({**body, "max_tokens": 12, "exclude_input_in_output": True})
    assert again.json()["text_output"] == pefts_greedy_text("tutorial", "The list", 12)
