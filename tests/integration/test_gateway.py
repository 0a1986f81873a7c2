"""The Envoy gateway in front of the real Triton: keys, limits, routes, errors, ids and logs."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.harness import assert_error_contract, infer_inputs, model_log_records, sample, scrape
from tools.processes import free_port, gateway_process, http_ok

BODY = {"text_input": "The list", "max_tokens": 4}


def post(gateway, path: str = "/generate", body: Any = BODY, **headers: str) -> requests.Response:
    return requests.post(gateway.url + path, json=body, headers=headers, timeout=30)


def _text_input(module: Any) -> list[Any]:
    tensor = module.InferInput("text_input", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"The list"]], dtype=object))
    return [tensor]


# ---- API keys ---------------------------------------------------------------------------

def test_missing_key_gets_401_json_with_www_authenticate(gateway):
    reply = post(gateway)
    body = assert_error_contract(reply, 401, "unauthenticated")
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert "X-API-Key" in body["error"]


def test_unknown_and_revoked_keys_get_the_same_403(gateway):
    revoked = gateway.issue("soon-revoked")
    gateway.revoke("soon-revoked")
    time.sleep(1)
    unknown = assert_error_contract(post(gateway, **{"X-API-Key": "llmk_" + "0" * 40}), 403,
                                "forbidden")
    gone = assert_error_contract(post(gateway, **{"X-API-Key": revoked}), 403, "forbidden")
    assert unknown["error"].split(" (request id")[0] == gone["error"].split(" (request id")[0]


def test_key_is_accepted_as_x_api_key_or_bearer_token(gateway, api_key):
    assert post(gateway, **{"X-API-Key": api_key}).status_code == 200
    assert post(gateway, Authorization=f"Bearer {api_key}").status_code == 200
    assert post(gateway, Authorization=f"Basic {api_key}").status_code == 401


def _wait_for_status(gateway, key: str, status: int, timeout: float = 5.0) -> float:
    start = time.monotonic()
    while post(gateway, **{"X-API-Key": key}).status_code != status:
        assert time.monotonic() - start < timeout, f"key never answered {status}"
        time.sleep(0.05)
    return time.monotonic() - start


def test_issued_key_works_and_revoked_key_is_rejected_without_restart(gateway):
    key = gateway.issue("rotating")
    assert _wait_for_status(gateway, key, 200) < 5
    gateway.revoke("rotating")
    assert _wait_for_status(gateway, key, 403) < 5


def test_revocation_does_not_drop_an_in_flight_request(gateway):
    key = gateway.issue("in-flight")
    _wait_for_status(gateway, key, 200)
    result: dict[str, Any] = {}

    def long_request() -> None:
        result["reply"] = post(gateway, body={"text_input": "The", "max_tokens": 200,
                                              "ignore_eos": True}, **{"X-API-Key": key})

    worker = threading.Thread(target=long_request)
    worker.start()
    time.sleep(0.1)
    gateway.revoke("in-flight")
    worker.join(30)
    assert result["reply"].status_code == 200
    assert result["reply"].json()["num_output_tokens"] == 200


def test_key_store_and_envoy_files_hold_no_plaintext_key(gateway):
    key = gateway.issue("at-rest")
    for path in gateway.keys.dir.rglob("*"):
        if path.is_file():
            assert key not in path.read_text(errors="replace"), path
            assert key[5:] not in path.read_text(errors="replace"), path


# ---- rate limits ------------------------------------------------------------------------

def test_over_the_tier_rate_gets_429_json_with_retry_after(gateway):
    key = gateway.issue("limited", "test")  # burst 3, 1 request/s
    _wait_for_status(gateway, key, 200)
    replies = [post(gateway, **{"X-API-Key": key}) for _ in range(5)]
    limited = [r for r in replies if r.status_code == 429]
    assert limited, [r.status_code for r in replies]
    assert_error_contract(limited[0], 429, "rate_limited")
    assert int(limited[0].headers["retry-after"]) >= 1
    assert limited[0].headers["x-ratelimit-limit"] == "3"
    assert limited[0].headers["x-ratelimit-remaining"] == "0"


def test_one_keys_burst_never_takes_another_keys_quota(gateway):
    greedy, patient = gateway.issue("greedy", "test"), gateway.issue("patient", "test")
    _wait_for_status(gateway, greedy, 200)
    statuses = [post(gateway, **{"X-API-Key": greedy}).status_code for _ in range(6)]
    assert 429 in statuses
    assert [post(gateway, **{"X-API-Key": patient}).status_code for _ in range(2)] == [200] * 2


def test_premium_tier_allows_what_the_test_tier_refuses(gateway, api_key):
    assert [post(gateway, **{"X-API-Key": api_key}).status_code for _ in range(6)] == [200] * 6


def test_grpc_over_the_limit_gets_resource_exhausted(gateway):
    key = gateway.issue("grpc-limited", "test")
    _wait_for_status(gateway, key, 200)
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    codes = []
    for _ in range(5):
        try:
            client.infer("llm", _text_input(grpcclient), headers={"x-api-key": key})
            codes.append("OK")
        except InferenceServerException as exc:
            codes.append(exc.status())
    assert "StatusCode.RESOURCE_EXHAUSTED" in codes


# ---- routes -----------------------------------------------------------------------------

def test_tritonclient_http_and_grpc_work_through_the_gateway(gateway, api_key):
    http = httpclient.InferenceServerClient(gateway.url.removeprefix("http://"))
    grpc = grpcclient.InferenceServerClient(gateway.grpc_url)
    headers = {"x-api-key": api_key}
    texts = [client.infer("llm", _text_input(module), headers=dict(headers))
             .as_numpy("text_output")[0][0] for client, module in
             ((http, httpclient), (grpc, grpcclient))]
    assert texts[0] == texts[1] and texts[0].startswith(b"The list")
    assert http.is_model_ready("llm", headers=dict(headers))
    assert grpc.get_model_metadata("llm", headers=headers).name == "llm"


def test_grpc_without_a_key_is_unauthenticated(gateway):
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        client.infer("llm", _text_input(grpcclient))
    assert info.value.status() == "StatusCode.UNAUTHENTICATED"


def test_generate_stream_passes_through_as_server_sent_events(gateway, api_key):
    with requests.post(gateway.url + "/v2/models/llm/generate_stream", json=BODY, stream=True,
                       headers={"X-API-Key": api_key}, timeout=30) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in reply.iter_lines(decode_unicode=True)
                  if line.startswith("data:")]
    assert events and events[-1]["finish_reason"] in ("stop", "length")


def test_short_generate_alias_reaches_the_generate_extension(gateway, api_key):
    reply = post(gateway, "/generate", **{"X-API-Key": api_key})
    assert reply.status_code == 200 and reply.json()["model_name"] == "llm"


def test_health_routes_need_no_key_and_reveal_nothing(gateway):
    live = requests.get(gateway.url + "/healthz", timeout=5)
    ready = requests.get(gateway.url + "/readyz", timeout=5)
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert ready.status_code == 200 and ready.content == b""


@pytest.mark.parametrize("method,path", [
    ("POST", "/v2/repository/index"),
    ("POST", "/v2/repository/models/llm/unload"),
    ("GET", "/v2/systemsharedmemory/status"),
    ("GET", "/v2/cudasharedmemory/status"),
    ("GET", "/v2/trace/setting"),
    ("GET", "/v2/logging"),
    ("GET", "/metrics"),
    ("GET", "/v2/models/other/config"),
])
def test_admin_apis_are_not_reachable_with_an_ordinary_key(gateway, api_key, method, path):
    reply = requests.request(method, gateway.url + path, headers={"X-API-Key": api_key},
                             timeout=5)
    assert_error_contract(reply, 404, "not_found")


def test_grpc_model_control_is_not_reachable_with_an_ordinary_key(gateway, api_key):
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        client.unload_model("llm", headers={"x-api-key": api_key})
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    assert client.is_model_ready("llm", headers={"x-api-key": api_key})


def test_triton_client_errors_stay_4xx_through_the_gateway(gateway, api_key):
    reply = post(gateway, body={"text_input": "hi", "temperature": 5}, **{"X-API-Key": api_key})
    body = assert_error_contract(reply, 400, "invalid_request")
    assert body["error"].startswith("`temperature` must be in [0, 2], got 5 (request id")


def test_body_over_the_limit_gets_413_before_triton(gateway, api_key):
    reply = post(gateway, body={"text_input": "x" * (1024 * 1024 + 10)},
                 **{"X-API-Key": api_key})
    assert_error_contract(reply, 413, "payload_too_large")


def test_reserved_parameters_field_on_generate_is_a_400(gateway, api_key):
    reply = post(gateway, body={**BODY, "parameters": {"x-llm-key-id": "someone"}},
                 **{"X-API-Key": api_key})
    assert_error_contract(reply, 400, "invalid_request")


# ---- request ids and logs ---------------------------------------------------------------

def test_request_id_round_trips_to_the_access_log_and_the_model_log(gateway, api_key,
                                                                   triton_log):
    request_id = f"test-round-trip-{time.time_ns()}"
    reply = post(gateway, **{"X-API-Key": api_key, "X-Request-Id": request_id})
    assert reply.headers["x-request-id"] == request_id
    time.sleep(1.0)  # the access log is flushed every 500 ms
    access = [json.loads(line) for line in gateway.access_log.read_text().splitlines()]
    entry = next(e for e in access if e["request_id"] == request_id)
    assert entry["status"] == 200 and entry["tier"] == "premium"
    assert entry["key_id"].startswith("key_") and entry["key_name"] == "tests"
    for field in ("timestamp", "method", "path", "protocol", "grpc_status", "response_flags",
                  "upstream_ms", "duration_ms", "bytes_received", "bytes_sent"):
        assert field in entry
    model = next(r for r in model_log_records(triton_log) if r["request_id"] == request_id)
    assert model["key_id"] == entry["key_id"] and model["completion_tokens"] == 4


def _access_entry(gateway, request_id: str, timeout: float = 5) -> dict:
    """The access log's line of `request_id`, once flushed (every 500 ms)."""
    deadline = time.monotonic() + timeout
    while True:
        for line in gateway.access_log.read_text().splitlines():
            entry = json.loads(line)
            if entry["request_id"] == request_id:
                return entry
        assert time.monotonic() < deadline, f"no access log line for {request_id}"
        time.sleep(0.1)


@pytest.mark.parametrize("route", ["generate", "generate_stream", "completions",
                                   "completions_stream", "chat_stream"])
def test_access_log_says_where_each_answers_time_went_as_the_model_measured_it(
        gateway, api_key, triton_log, route):
    """Queue, prefill and decode milliseconds ride at the end of every HTTP answer (a
    stream's headers leave before they are known); the gateway's access log reads them there,
    with the token counts, so one slow request is found by its id."""
    request_id = f"test-timing-{route}-{time.time_ns()}"
    headers = {"X-API-Key": api_key, "X-Request-Id": request_id}
    body = {"text_input": "The list", "max_tokens": 6, "ignore_eos": True}
    openai_body = {"model": "demo_model", "max_tokens": 6, "stream": route.endswith("stream")}
    path, payload = {
        "generate": ("/generate", body), "generate_stream": ("/generate_stream", body),
        "completions": ("/v1/completions", {**openai_body, "prompt": "The list"}),
        "completions_stream": ("/v1/completions", {**openai_body, "prompt": "The list"}),
        "chat_stream": ("/v1/chat/completions", {
            **openai_body, "messages": [{"role": "user", "content": "The list"}]}),
    }[route]
    reply = requests.post(gateway.url + path, json=payload, headers=headers, timeout=60)
    assert reply.status_code == 200, reply.text
    if route == "generate":  # the generate API returns them as outputs
        assert {"queue_ms", "prefill_ms", "decode_ms"} <= set(reply.json())
    entry = _access_entry(gateway, request_id)
    model = next(r for r in model_log_records(triton_log) if r["request_id"] == request_id)
    spent = [float(entry[name]) for name in ("queue_ms", "prefill_ms", "decode_ms")]
    assert all(value >= 0 for value in spent) and spent[2] > 0, entry
    assert sum(spent) == pytest.approx(model["total_ms"], abs=0.05)
    assert int(entry["completion_tokens"]) == model["completion_tokens"] == 6


@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "stream"])
def test_grpc_answers_timings_and_counts_reach_the_access_log(gateway, api_key, triton_log,
                                                              streamed):
    """gRPC answers are protobuf: the gateway decodes the last message's output tensors."""
    import queue

    request_id = f"test-grpc-timing-{streamed}-{time.time_ns()}"
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    headers = {"x-api-key": api_key, "x-request-id": request_id}
    inputs = infer_inputs(grpcclient, "The list", max_tokens=5, ignore_eos=True)
    if not streamed:
        result = client.infer("llm", inputs, headers=headers)
        assert result.as_numpy("queue_ms") is not None  # an output tensor to gRPC clients
    else:
        results: "queue.Queue[Any]" = queue.Queue()
        client.start_stream(callback=lambda result, error: results.put((result, error)),
                            headers=headers)
        client.async_stream_infer("llm_stream", inputs, enable_empty_final_response=True)
        while True:
            result, error = results.get(timeout=30)
            assert error is None, error
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
        client.stop_stream()
    entry = _access_entry(gateway, request_id)
    model = next(r for r in model_log_records(triton_log) if r["request_id"] == request_id)
    spent = [float(entry[name]) for name in ("queue_ms", "prefill_ms", "decode_ms")]
    assert sum(spent) == pytest.approx(model["total_ms"], abs=0.05)
    assert (int(entry["prompt_tokens"]), int(entry["completion_tokens"])) == (
        model["prompt_tokens"], 5)


def test_openai_sdk_keeps_the_timing_extension(gateway, api_key):
    import openai

    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key, max_retries=0)
    reply = client.completions.create(model="demo_model", prompt="The list", max_tokens=3)
    assert set(reply.model_extra["llm_timing"]) == {"queue_ms", "prefill_ms", "decode_ms"}


def test_malformed_request_id_is_replaced(gateway, api_key):
    reply = post(gateway, **{"X-API-Key": api_key, "X-Request-Id": "bad id\twith spaces"})
    assert reply.status_code == 200
    assert reply.headers["x-request-id"] != "bad id\twith spaces"
    assert len(reply.headers["x-request-id"]) >= 16


def test_logs_hold_no_key_and_no_prompt_text(gateway, triton_log):
    key = gateway.issue("log-scan")
    _wait_for_status(gateway, key, 200)
    prompt = "Ultraviolet pangolin sonata"
    post(gateway, body={"text_input": prompt, "max_tokens": 3}, **{"X-API-Key": key})
    post(gateway, body={"text_input": prompt}, Authorization=f"Bearer {key}x")
    time.sleep(1.0)
    for log in (gateway.access_log, triton_log):
        text = log.read_text(errors="replace")
        assert key not in text and key[5:] not in text
        assert prompt not in text


# ---- what reaches the upstream ----------------------------------------------------------

class _HeaderEcho(BaseHTTPRequestHandler):
    """Stands where Triton would, to show exactly which headers the gateway forwards."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("content-length", 0))
        body = self.rfile.read(length).decode()
        payload = json.dumps({"headers": {k.lower(): v for k, v in self.headers.items()},
                              "body": body}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802 - the gateway's health checks: always ready
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def echo_gateway(triton, gateway) -> Iterator[str]:
    """A second real Envoy, same config and key store, whose upstreams (Triton's HTTP port and
    the OpenAI frontend) echo the request."""
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _HeaderEcho)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    process, settings = gateway_process(triton, name="envoy-echo",
                                        LLM_HTTP_PORT=str(server.server_address[1]),
                                        LLM_OPENAI_PORT=str(server.server_address[1]))
    process.start()
    url = f"http://127.0.0.1:{settings.port}"
    try:
        process.wait_until(lambda: http_ok(f"{url}/healthz"), timeout=30)
        yield url
    finally:
        process.stop()
        server.shutdown()


@pytest.mark.parametrize("path", ["/v2/models/llm/infer", "/v1/chat/completions"])
def test_key_headers_never_reach_triton_or_the_frontend_and_spoofed_identity_is_replaced(
        echo_gateway, gateway, api_key, path):
    reply = requests.post(echo_gateway + path, json={}, timeout=10, headers={
        "X-API-Key": api_key, "Authorization": "Bearer other", "X-LLM-Key-Id": "key_spoofed",
        "X-LLM-Tier": "premium-plus", "X-LLM-Key-Name": "admin"})
    seen = reply.json()["headers"]
    assert "x-api-key" not in seen and "authorization" not in seen
    assert "x-llm-key-name" not in seen  # the name is for the gateway's access log only
    assert seen["x-llm-tier"] == "premium"
    assert seen["x-llm-key-id"].startswith("key_") and seen["x-llm-key-id"] != "key_spoofed"
    assert seen["x-request-id"] == reply.headers["x-request-id"]


def test_generate_body_carries_request_id_and_key_id_to_the_model(echo_gateway, api_key):
    reply = requests.post(echo_gateway + "/generate", json=BODY, timeout=10,
                          headers={"X-API-Key": api_key, "X-Request-Id": "echo-1"})
    body = json.loads(reply.json()["body"])
    assert body["text_input"] == "The list"
    assert body["parameters"]["x-request-id"] == "echo-1"
    assert body["parameters"]["x-llm-key-id"].startswith("key_")


# ---- the scrape listener ---------------------------------------------------------------------

def test_scrape_listener_serves_envoys_stats_and_the_gateways_state_read_only(gateway):
    url = f"http://127.0.0.1:{gateway.settings.metrics_port}"
    samples = scrape(url + "/metrics")
    assert sample(samples, "llm_gateway_draining") == 0
    assert sample(samples, "llm_gateway_global_limits_enabled", ratelimit_service="none",
                  failure_mode="open") == 0
    assert any(name == "envoy_http_downstream_rq_total" for name, _ in samples)
    # The admin port's state-changing pages are not reachable through it, by any method.
    for method, path in (("POST", "/metrics"), ("POST", "/runtime_modify?llm.draining=100"),
                         ("POST", "/quitquitquit"), ("GET", "/runtime"),
                         ("GET", "/config_dump")):
        assert requests.request(method, url + path, timeout=5).status_code == 404
    assert sample(scrape(url + "/metrics"), "llm_gateway_draining") == 0
    # The admin port (loopback) says what it enforces too, in its runtime values.
    runtime_values = requests.get(f"http://127.0.0.1:{gateway.settings.admin_port}/runtime",
                                  timeout=5).json()["entries"]
    assert {key: runtime_values[key]["final_value"] for key in (
        "llm.global_limits", "llm.ratelimit_service", "llm.ratelimit_failure_mode")} == {
        "llm.global_limits": "0", "llm.ratelimit_service": "none",
        "llm.ratelimit_failure_mode": "open"}
