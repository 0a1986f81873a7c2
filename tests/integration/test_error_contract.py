"""Every error through the gateway, as Triton's own clients meet it.

For each error the gateway or the model can give, `tritonclient.http` and `tritonclient.grpc`
raise `InferenceServerException` whose `str()` works and holds the message and the request
id, with a meaningful `status()`; `perf_analyzer` reports a refusal and exits non-zero; the
raw HTTP body is the one documented error shape (contracts/errors.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
import urllib.request
from typing import Any, Callable, Iterator

import openai
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.harness import assert_error_contract, infer_inputs
from tools import runtime
from tools.processes import (ROOT, gateway_process, http_ok, openai_process, triton_process,
                             triton_settings)

REQUEST_ID = re.compile(r"\(request id ([\w\-.:]+)\)$")
LONG = {"text_input": "The", "max_tokens": 256, "ignore_eos": True}


def raised(call: Callable[[], Any]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def assert_readable(error: InferenceServerException, status: str, message: str) -> str:
    """What a user's `print(e)` shows: the status, the message and the request id."""
    text = str(error)
    assert error.status() == status, text
    assert message in text, text
    match = REQUEST_ID.search(text)
    assert match, f"no request id in {text!r}"
    return match.group(1)


def http_client(url: str) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(url.removeprefix("http://"))


def infer_both(gateway: Any, headers: dict[str, str], model: str = "llm",
               **params: Any) -> tuple[InferenceServerException, InferenceServerException]:
    """The same inference through tritonclient HTTP and gRPC; both must fail."""
    prompt = params.pop("prompt", "The list")
    by_http = raised(lambda: http_client(gateway.url).infer(
        model, infer_inputs(httpclient, prompt, **params), headers=dict(headers)))
    by_grpc = raised(lambda: grpcclient.InferenceServerClient(gateway.grpc_url).infer(
        model, infer_inputs(grpcclient, prompt, **params), headers=dict(headers)))
    return by_http, by_grpc


# ---- errors the gateway makes -------------------------------------------------------------

def test_missing_key_is_readable_in_tritonclient_http_and_grpc(gateway):
    by_http, by_grpc = infer_both(gateway, {})
    assert_readable(by_http, "401", "an API key is required")
    assert_readable(by_grpc, "StatusCode.UNAUTHENTICATED", "an API key is required")


def test_unknown_and_revoked_keys_are_readable_in_tritonclient(gateway):
    revoked = gateway.issue("contract-revoked")
    gateway.revoke("contract-revoked")
    for key in ("llmk_" + "1" * 40, revoked):
        by_http, by_grpc = infer_both(gateway, {"x-api-key": key})
        assert_readable(by_http, "403", "the API key is not valid")
        assert_readable(by_grpc, "StatusCode.PERMISSION_DENIED", "the API key is not valid")


def test_unknown_model_is_a_readable_404_over_http_and_not_found_over_grpc(gateway, api_key):
    by_http, by_grpc = infer_both(gateway, {"x-api-key": api_key}, model="no_such_model")
    assert_readable(by_http, "404", "no such route")
    assert_readable(by_grpc, "StatusCode.NOT_FOUND", "no_such_model")


def test_oversized_body_is_a_readable_413_in_tritonclient_http(gateway, api_key):
    error = raised(lambda: http_client(gateway.url).infer(
        "llm", infer_inputs(httpclient, "x" * (1024 * 1024 + 10)),
        headers={"x-api-key": api_key}))
    assert_readable(error, "413", "larger than this gateway accepts")


def test_rate_limited_key_is_readable_in_tritonclient_http_and_grpc(gateway):
    key = gateway.issue("contract-limited", "test")  # burst 3, 1 request/s
    client = http_client(gateway.url)
    deadline = time.monotonic() + 10
    while True:  # spend the burst
        try:
            client.get_model_metadata("llm", headers={"x-api-key": key})
        except InferenceServerException as error:
            assert_readable(error, "429", "rate limit exceeded")
            break
        assert time.monotonic() < deadline, "the test tier never limited"
    by_http, by_grpc = infer_both(gateway, {"x-api-key": key})
    assert_readable(by_http, "429", "rate limit exceeded")
    assert_readable(by_grpc, "StatusCode.RESOURCE_EXHAUSTED", "rate limit exceeded")


def test_perf_analyzer_reports_a_rate_limit_refusal_and_exits_non_zero(gateway):
    key = gateway.issue("contract-perf", "test")
    for _ in range(4):
        requests.get(f"{gateway.url}/v2/models/llm", headers={"x-api-key": key}, timeout=10)
    env = {**os.environ, "LD_LIBRARY_PATH": str(runtime.client_lib_dir(runtime.RUN_DIR))}
    for protocol in ("http", "grpc"):
        done = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "perf_analyzer"), "-m", "llm", "-u",
             gateway.grpc_url, "-i", protocol, "-H", f"x-api-key: {key}", "-p", "2000"],
            capture_output=True, text=True, timeout=120, env=env)
        output = done.stdout + done.stderr
        assert done.returncode != 0, output
        assert "rate limit exceeded for this API key" in output, output
        assert REQUEST_ID.search(output.strip().splitlines()[-1]), output
        assert "JSON" not in output, output  # no parse error of the answer


# ---- errors Triton and the model make -----------------------------------------------------

def test_validation_errors_are_readable_with_their_request_id(gateway, api_key):
    by_http, by_grpc = infer_both(gateway, {"x-api-key": api_key, "x-request-id": "mine-42"},
                                  max_tokens=-3)
    message = "`max_tokens` must be in [1, 512], got -3"
    assert assert_readable(by_http, "400", message) == "mine-42"
    assert assert_readable(by_grpc, "StatusCode.INVALID_ARGUMENT", message) == "mine-42"
    assert "invalid_request:" not in str(by_http) + str(by_grpc)  # the type is not prose


def test_generate_validation_error_is_the_contract_with_the_request_id(gateway, api_key):
    reply = requests.post(gateway.url + "/generate", json={"text_input": "a", "max_tokens": -3},
                          headers={"X-API-Key": api_key}, timeout=30)
    body = assert_error_contract(reply, 400, "invalid_request")
    assert body["error"].startswith("`max_tokens` must be in [1, 512], got -3 (request id ")


def test_stream_refused_before_its_first_event_is_a_plain_contract_body(gateway, api_key):
    reply = requests.post(gateway.url + "/generate_stream", json={"text_input": "a", "top_p": 7},
                          headers={"X-API-Key": api_key}, timeout=30)
    assert_error_contract(reply, 400, "invalid_request")


def test_body_triton_cannot_read_is_a_400_in_the_contract(gateway, api_key):
    reply = requests.post(gateway.url + "/v2/models/llm/generate", json={"text_input": 5},
                          headers={"X-API-Key": api_key}, timeout=30)
    assert_error_contract(reply, 400, "invalid_request")


def test_other_method_on_a_routed_path_is_a_405_in_the_contract(gateway, api_key):
    reply = requests.put(gateway.url + "/v2/models/llm/infer", headers={"X-API-Key": api_key},
                         timeout=30)
    assert_error_contract(reply, 405, "method_not_allowed")


# ---- capacity and drain: a gateway in front of a one-sequence engine ---------------------

@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    """A Triton whose engine runs one sequence and queues one, behind its own gateway."""
    settings = triton_settings(tmp_path_factory.mktemp("small"))
    server = triton_process(settings, LLM_MAX_NUM_SEQS="1", LLM_MAX_QUEUE_SIZE="1")
    server.start()
    frontend = openai_process(settings)
    gateway, gateway_settings = gateway_process(settings, name="envoy-small")
    try:
        server.wait_until(lambda: http_ok(f"{settings.http_url}/v2/models/llm/ready"))
        frontend.start()
        frontend.wait_until(lambda: http_ok(f"http://127.0.0.1:{settings.openai_port}/health"))
        gateway.start()
        url = f"http://{gateway_settings.host}:{gateway_settings.port}"
        gateway.wait_until(lambda: http_ok(url + "/readyz"), timeout=30)
        key, _ = runtime.KeyStore(gateway_settings.keys_dir).issue("small", "premium")
        time.sleep(0.5)  # the key filter reaches Envoy
        yield _Small(url, f"{gateway_settings.host}:{gateway_settings.port}",
                     gateway_settings.admin_port), key
    finally:
        gateway.stop()
        frontend.stop()
        server.stop()


class _Small:
    def __init__(self, url: str, grpc_url: str, admin_port: int) -> None:
        self.url, self.grpc_url, self.admin_port = url, grpc_url, admin_port


def _until_refused(call: Callable[[], Any], timeout: float = 30) -> InferenceServerException:
    """Repeat `call` while other clients keep the engine full until it is refused."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            call()
        except InferenceServerException as error:
            return error
        assert time.monotonic() < deadline, "never refused for capacity"


class _Busy:
    """Clients that keep the one-sequence engine and its one queue slot full."""

    def __init__(self, gateway: _Small, key: str) -> None:
        self._stop = threading.Event()
        self._workers = [threading.Thread(target=self._loop, args=(gateway, key))
                         for _ in range(3)]

    def _loop(self, gateway: _Small, key: str) -> None:
        while not self._stop.is_set():
            requests.post(gateway.url + "/generate", json=LONG, headers={"X-API-Key": key},
                          timeout=60)

    def __enter__(self) -> "_Busy":
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(120)


def test_full_queue_is_a_503_overloaded_in_every_client(small):
    gateway, key = small
    with _Busy(gateway, key):
        headers = {"x-api-key": key}
        by_http = _until_refused(lambda: http_client(gateway.url).infer(
            "llm", infer_inputs(httpclient, "The list", max_tokens=4), headers=dict(headers)))
        by_grpc = _until_refused(lambda: grpcclient.InferenceServerClient(
            gateway.grpc_url).infer("llm", infer_inputs(grpcclient, "The list", max_tokens=4),
                                    headers=dict(headers)))
        deadline, reply = time.monotonic() + 30, None
        while time.monotonic() < deadline:
            reply = requests.post(gateway.url + "/generate", json={"text_input": "x"},
                                  headers={"X-API-Key": key}, timeout=60)
            if reply.status_code != 200:
                break
    assert_readable(by_http, "503", "the server is at capacity")
    assert_readable(by_grpc, "StatusCode.UNAVAILABLE", "the server is at capacity")
    body = assert_error_contract(reply, 503, "overloaded")
    assert reply.headers["retry-after"] == "1"
    assert "retry later" in body["error"]


def test_full_queue_on_the_openai_api_is_a_rate_limit_error_with_retry_after(small):
    gateway, key = small
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    with _Busy(gateway, key):
        deadline = time.monotonic() + 30
        with pytest.raises(openai.RateLimitError) as info:
            while time.monotonic() < deadline:
                client.completions.create(model="demo_model", prompt="The", max_tokens=4)
    error = info.value
    assert error.body["code"] == "overloaded" and "at capacity" in error.body["message"]
    assert error.response.headers["retry-after"] == "1"


def test_draining_gateway_is_a_readable_503_in_tritonclient(small):
    gateway, key = small
    admin = f"http://127.0.0.1:{gateway.admin_port}/runtime_modify?llm.draining="

    def drain(percent: int) -> None:
        request = urllib.request.Request(admin + str(percent), method="POST")
        urllib.request.urlopen(request, timeout=5).close()

    drain(100)
    try:
        by_http, by_grpc = infer_both(gateway, {"x-api-key": key})
        reply = requests.post(gateway.url + "/generate", json={"text_input": "x"},
                              headers={"X-API-Key": key}, timeout=30)
        with pytest.raises(openai.InternalServerError) as by_openai:
            openai.OpenAI(base_url=gateway.url + "/v1", api_key=key,
                          max_retries=0).models.list()
    finally:
        drain(0)
    assert by_openai.value.status_code == 503
    assert by_openai.value.body["code"] == "unavailable"
    assert by_openai.value.response.headers["retry-after"]
    assert_readable(by_http, "503", "unavailable")
    assert_readable(by_grpc, "StatusCode.UNAVAILABLE", "unavailable")
    assert_error_contract(reply, 503, "unavailable")
    assert reply.headers["retry-after"]


# ---- every error body, raw ----------------------------------------------------------------

@pytest.mark.parametrize("method,path,body,headers,status,kind", [
    ("POST", "/generate", {"text_input": "x"}, {}, 401, "unauthenticated"),
    ("POST", "/generate", {"text_input": "x"}, {"X-API-Key": "llmk_nope"}, 403, "forbidden"),
    ("GET", "/v2/repository/index", None, "key", 404, "not_found"),
    ("POST", "/generate", {"text_input": "x", "temperature": 9}, "key", 400, "invalid_request"),
    ("POST", "/v2/models/llm/generate", {"text_input": ""}, "key", 400, "invalid_request"),
    ("POST", "/generate", {"text_input": "x", "parameters": {}}, "key", 400, "invalid_request"),
    ("POST", "/generate", {"text_input": "x" * 1100000}, "key", 413, "payload_too_large"),
    ("POST", "/generate", {"text_input": "x"}, {"X-API-Key": "k", "X-Pad": "p" * 40000}, 431,
     "headers_too_large"),
])
def test_every_error_body_is_the_one_documented_shape_with_its_request_id(
        gateway, api_key, method, path, body, headers, status, kind):
    headers = {"X-API-Key": api_key} if headers == "key" else headers
    reply = requests.request(method, gateway.url + path, json=body, headers=headers, timeout=60)
    assert_error_contract(reply, status, kind)
