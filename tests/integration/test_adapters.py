"""LoRA adapters through the whole service, as `make serve` runs it with two replicas and the
demo model's two bundled adapters: chosen per request on every API, listed, refused when
unknown, loaded and unloaded at run time on every replica by admin keys only, recorded across a
replica's restart. Real Triton, Envoy and frontends, driven with the real clients."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import openai
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from contracts.adapters import ADMIN_TIER, MODEL as ADAPTERS_MODEL
from tools import runtime
from tools.processes import ROOT, RunnerStack, http_ok, runner_stack

DEMO_ADAPTERS = ROOT / "demo_model" / "adapters"
PROMPT = "The list"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunnerStack]:
    run_dir = tmp_path_factory.mktemp("adapters")
    stack = runner_stack(run_dir, LLM_REPLICAS="2", LLM_DTYPE="float32",
                         LLM_LORA_ADAPTERS=f"notice={DEMO_ADAPTERS / 'notice'},"
                                           f"tutorial={DEMO_ADAPTERS / 'tutorial'}")
    try:
        for _pool, replica in stack.settings.pools():  # both replicas, not only the first
            stack.runner.wait_until(
                lambda r=replica: http_ok(f"{r.http_url}/v2/models/llm/ready")
                and http_ok(f"http://127.0.0.1:{r.openai_port}/health"), timeout=120)
        # ... and the gateway's health checks have seen them (once a second)
        stack.runner.wait_until(lambda: runtime.gateway_upstreams_healthy(stack.gateway),
                                timeout=30)
        time.sleep(2)
        yield stack
    finally:
        stack.runner.stop(grace=60)


@pytest.fixture(scope="module")
def admin_key(stack: RunnerStack) -> str:
    key, _ = runtime.KeyStore(stack.gateway.keys_dir).issue("operator", ADMIN_TIER)
    time.sleep(2)  # the gateway watches its key directory
    return key


def sdk(stack: RunnerStack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key=key, max_retries=0)


def generate(stack: RunnerStack, key: str, headers: dict[str, str] | None = None,
             **fields: Any) -> requests.Response:
    return requests.post(stack.url + "/v2/models/llm/generate", timeout=60,
                         headers={"X-API-Key": key, **(headers or {})},
                         json={"text_input": PROMPT, "max_tokens": 12, "ignore_eos": True,
                               "exclude_input_in_output": True, **fields})


def test_models_list_the_base_and_each_adapter_with_the_base_as_parent(stack):
    models = {m.id: m for m in sdk(stack, stack.key).models.list().data}
    assert set(models) == {"demo_model", "notice", "tutorial"}
    assert getattr(models["notice"], "parent") == "demo_model"
    assert sdk(stack, stack.key).models.retrieve("tutorial").id == "tutorial"


def test_every_api_picks_the_same_adapter_and_adapters_answer_differently(stack):
    base = generate(stack, stack.key).json()["text_output"]
    by_field = generate(stack, stack.key, adapter="notice").json()["text_output"]
    by_header = generate(stack, stack.key, {"x-llm-adapter": "notice"}).json()["text_output"]
    openai_text = sdk(stack, stack.key).completions.create(
        model="notice", prompt=PROMPT, max_tokens=12, temperature=0,
        extra_body={"ignore_eos": True})
    assert by_field == by_header == openai_text.choices[0].text != base
    assert openai_text.model == "notice"
    other = generate(stack, stack.key, adapter="tutorial").json()["text_output"]
    assert other not in (base, by_field)
    # The access log names what ran (the header; an OpenAI answer's model), the metrics count it.
    time.sleep(1)  # the access log is flushed every 500 ms
    entries = [json.loads(line) for line in
               Path(stack.gateway.access_log).read_text().splitlines()]
    assert any(e["adapter"] == "notice" and e["path"] == "/v2/models/llm/generate"
               for e in entries)
    assert any(e["model"] == "notice" and e["path"] == "/v1/completions" for e in entries)
    # Each replica counts what it served (the gateway balances over both).
    metrics = [requests.get(replica.metrics_url, timeout=10).text
               for _pool, replica in stack.settings.pools()]
    assert all('llm:lora_adapters{model_name="llm",state="served"} 2' in m for m in metrics)
    served = [re.search(r'llm:adapter_requests_total\{adapter="notice",model_name="llm"\} (\d+)',
                        m) for m in metrics]
    assert sum(int(found.group(1)) for found in served if found) >= 3, metrics

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{stack.gateway.port}")
    inputs = [grpcclient.InferInput("text_input", [1, 1], "BYTES"),
              grpcclient.InferInput("max_tokens", [1, 1], "INT32"),
              grpcclient.InferInput("ignore_eos", [1, 1], "BOOL"),
              grpcclient.InferInput("exclude_input_in_output", [1, 1], "BOOL")]
    for tensor, value in zip(inputs, (np.array([[PROMPT.encode()]], dtype=object),
                                      np.array([[12]], dtype=np.int32),
                                      np.array([[True]]), np.array([[True]]))):
        tensor.set_data_from_numpy(value)
    result = client.infer("llm", inputs, headers={"x-api-key": stack.key,
                                                  "x-llm-adapter": "notice"})
    assert result.as_numpy("text_output")[0][0].decode() == by_field


def test_a_mixed_batch_through_the_gateway_gives_each_request_what_it_gets_alone(stack):
    names = ["", "notice", "tutorial"]
    alone = {n: generate(stack, stack.key, adapter=n).json()["text_output"] for n in names}
    results: dict[int, str] = {}

    def one(i: int) -> None:
        results[i] = generate(stack, stack.key, adapter=names[i % 3]).json()["text_output"]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results[i] for i in range(9)] == [alone[names[i % 3]] for i in range(9)]


def test_an_unknown_adapter_is_a_404_naming_those_served_on_every_api(stack):
    reply = generate(stack, stack.key, adapter="nope")
    assert reply.status_code == 404, reply.text
    body = reply.json()
    assert body["type"] == "not_found" and "`notice`, `tutorial`" in body["error"]
    with pytest.raises(openai.NotFoundError, match="`demo_model`, `notice`, `tutorial`"):
        sdk(stack, stack.key).completions.create(model="nope", prompt=PROMPT, max_tokens=4)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{stack.gateway.port}")
    text = grpcclient.InferInput("text_input", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[PROMPT.encode()]], dtype=object))
    with pytest.raises(InferenceServerException, match="not served here") as refused:
        client.infer("llm", [text], headers={"x-api-key": stack.key, "x-llm-adapter": "nope"})
    assert refused.value.status() == "StatusCode.NOT_FOUND"
    assert generate(stack, stack.key).status_code == 200  # the service is still up


def test_ordinary_keys_cannot_load_or_unload_on_any_route(stack):
    load = {"lora_name": "x", "lora_path": str(DEMO_ADAPTERS / "notice")}
    with pytest.raises(openai.PermissionDeniedError, match="`admin` tier"):
        sdk(stack, stack.key).post("/load_lora_adapter", body=load, cast_to=object)
    reply = requests.post(stack.url + "/v1/unload_lora_adapter", json={"lora_name": "notice"},
                          headers={"X-API-Key": stack.key}, timeout=30)
    assert reply.status_code == 403 and reply.json()["error"]["code"] == "forbidden"
    # Triton's model behind the gateway's gRPC route refuses too: the tier comes from the key.
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{stack.gateway.port}")
    action = grpcclient.InferInput("action", [1], "BYTES")
    action.set_data_from_numpy(np.array([b"unload"], dtype=object))
    name = grpcclient.InferInput("name", [1], "BYTES")
    name.set_data_from_numpy(np.array([b"notice"], dtype=object))
    with pytest.raises(InferenceServerException) as refused:
        client.infer(ADAPTERS_MODEL, [action, name],
                     headers={"x-api-key": stack.key, "x-llm-tier": ADMIN_TIER})
    assert refused.value.status() == "StatusCode.PERMISSION_DENIED"
    assert {m.id for m in sdk(stack, stack.key).models.list().data} >= {"notice"}


def test_a_bad_adapter_directory_is_a_400_saying_what_is_wrong(stack, admin_key, tmp_path):
    with pytest.raises(openai.BadRequestError, match="has no adapter_config.json"):
        sdk(stack, admin_key).post("/load_lora_adapter", cast_to=object,
                                   body={"lora_name": "broken", "lora_path": str(tmp_path)})


def replica_adapters(replica: runtime.Settings) -> list[str]:
    reply = requests.get(f"http://127.0.0.1:{replica.openai_port}/v1/models", timeout=10)
    return [m["id"] for m in reply.json()["data"][1:]]


def test_unload_and_load_act_on_every_replica_and_streams_running_on_it_finish(
        stack, admin_key):
    client = sdk(stack, admin_key)
    finished: list[tuple[str, int]] = []

    def stream() -> None:
        chunks = list(sdk(stack, stack.key).completions.create(
            model="tutorial", prompt=PROMPT, max_tokens=96, stream=True,
            extra_body={"ignore_eos": True}))
        finished.append((chunks[-1].choices[0].finish_reason, len(chunks)))

    streams = [threading.Thread(target=stream) for _ in range(4)]
    for thread in streams:
        thread.start()
    time.sleep(1.0)  # the streams are running
    answer = client.post("/unload_lora_adapter", body={"lora_name": "tutorial"}, cast_to=object)
    assert answer["replicas"] == 2 and answer["adapters"] == ["notice"]
    for thread in streams:
        thread.join(120)
    assert [reason for reason, _ in finished] == ["length"] * 4
    for _pool, replica in stack.settings.pools():
        assert replica_adapters(replica) == ["notice"]
    with pytest.raises(openai.NotFoundError):
        sdk(stack, stack.key).completions.create(model="tutorial", prompt=PROMPT, max_tokens=2)

    path = str(DEMO_ADAPTERS / "tutorial")
    answer = client.post("/load_lora_adapter", body={"lora_name": "tutorial", "lora_path": path},
                         cast_to=object)
    assert answer["adapters"] == ["notice", "tutorial"]
    for _pool, replica in stack.settings.pools():
        assert replica_adapters(replica) == ["notice", "tutorial"]


def test_make_adapter_acts_on_every_replica_and_a_restarted_replica_serves_its_record(stack):
    env = {**os.environ, "LLM_RUN_DIR": str(stack.settings.run_dir),
           "LLM_GRPC_PORT": str(stack.settings.grpc_port), "LLM_REPLICAS": "2",
           "LLM_REPLICA_PORT_STEP": str(stack.settings.replica_port_step)}
    done = subprocess.run([sys.executable, "-m", "tools.serve", "adapter", "unload", "notice"],
                          env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("unload done; serving tutorial") == 2
    second = stack.settings.pools()[1][1]
    record = json.loads((Path(second.run_dir) / "adapters.json").read_text())
    assert list(record) == ["tutorial"]

    pid = runtime.find_process(b"tritonserver", f"--http-port={second.http_port}".encode())
    os.kill(pid, signal.SIGKILL)  # the runner restarts it; it must come back as it was
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        time.sleep(1)
        if http_ok(f"{second.http_url}/v2/models/llm/ready") and replica_adapters(second):
            break
    assert replica_adapters(second) == ["tutorial"]
    subprocess.run([sys.executable, "-m", "tools.serve", "adapter", "load", "notice",
                    str(DEMO_ADAPTERS / "notice")], env=env, check=True, timeout=60, cwd=ROOT,
                   capture_output=True)


def infer_inputs(**tensors: Any) -> list[grpcclient.InferInput]:
    inputs = []
    for name, (datatype, value) in tensors.items():
        tensor = grpcclient.InferInput(name, [1, 1], datatype)
        tensor.set_data_from_numpy(np.array([[value]], dtype=object if datatype == "BYTES"
                                            else np.int32))
        inputs.append(tensor)
    return inputs


def test_a_key_limited_to_some_models_is_refused_the_others_on_every_api(stack):
    key, _ = runtime.KeyStore(stack.gateway.keys_dir).issue("notice-only", "premium", ["notice"])
    time.sleep(2)  # the gateway watches its key directory
    client = sdk(stack, key)
    assert client.completions.create(model="notice", prompt=PROMPT, max_tokens=2).choices
    for model in ("tutorial", "demo_model"):
        with pytest.raises(openai.PermissionDeniedError, match=f"may not use the model `{model}`"):
            client.completions.create(model=model, prompt=PROMPT, max_tokens=2)
    assert generate(stack, key, adapter="notice").status_code == 200
    for refused in (generate(stack, key), generate(stack, key, adapter="tutorial"),
                    generate(stack, key, {"x-llm-adapter": "tutorial"})):
        assert refused.status_code == 403 and refused.json()["type"] == "forbidden"
    # gRPC: the gateway cannot read the tensor; the model refuses it from the key's list.
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{stack.gateway.port}")
    text = ("BYTES", PROMPT.encode())
    ok = grpc.infer("llm", infer_inputs(text_input=text, max_tokens=("INT32", 2),
                                        adapter=("BYTES", b"notice")),
                    headers={"x-api-key": key})
    assert ok.as_numpy("num_output_tokens")[0][0] == 2
    with pytest.raises(InferenceServerException, match="may not use it") as denied:
        grpc.infer("llm", infer_inputs(text_input=text, adapter=("BYTES", b"tutorial")),
                   headers={"x-api-key": key})
    assert denied.value.status() == "StatusCode.PERMISSION_DENIED"
    # ... and a client's own copy of the list is dropped: the key's list holds.
    assert generate(stack, key, {"x-llm-models": "tutorial"}, adapter="tutorial"
                    ).status_code == 403
    assert generate(stack, stack.key, {"x-llm-models": "notice"}).status_code == 200
