"""Malformed-input campaign against the real gateway and Triton.

Property-based requests generated from gateway/openapi.yaml (schemathesis, fixed seed,
bounded examples), a hand-written corpus of broken bodies, content types, methods, headers
and HTTP framing (raw sockets), clients that never finish their headers, and malformed gRPC
requests. Every answer must be a documented 4xx with a JSON body (gRPC: a status other than
INTERNAL/UNKNOWN, with a message), never a 5xx, and the service must still be ready at the
end. `make fuzz` runs the same file with more examples and more slow clients.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import grpc
import numpy as np
import pytest
import requests
import schemathesis
import tritonclient.grpc as grpcclient
import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance,
                                               response_headers_conformance,
                                               response_schema_conformance, status_code_conformance)
from tritonclient.grpc import service_pb2 as pb

from tests.harness import assert_error_contract, check_error_body
from tests.robustness.fuzz_corpus import GENERATE, INFER, Case, fill
from tests.robustness.fuzz_tally import TALLY
from tests.robustness.raw_http import RawReply, exchange

OPENAPI = Path(__file__).resolve().parents[2] / "gateway" / "openapi.yaml"
DOCUMENT = yaml.safe_load(OPENAPI.read_text())
GENERATE_ROUTES = ["/generate", "/generate_stream", "/v2/models/llm/generate",
                   "/v2/models/llm/generate_stream"]


def check_documented_error(status: Optional[int], content_type: str, body: bytes,
                           expected: int | set[int],
                           headers: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """The answer is the expected 4xx, labelled JSON, with a documented error body (and, when
    the headers are given, the body's request id in `x-request-id`)."""
    wanted = {expected} if isinstance(expected, int) else expected
    assert status in wanted, f"expected {sorted(wanted)}, got {status}: {body[:300]!r}"
    assert content_type.startswith("application/json"), (content_type, body[:300])
    request_id = None if headers is None else headers.get("x-request-id", "<no header>")
    return check_error_body(json.loads(body), status, request_id)


def _headers(key: str, **extra: str) -> dict[str, str]:
    return {"X-API-Key": key, **extra}


def patiently(send: Callable[[], Any]) -> Any:
    """Send; when the key's bucket is empty (429), wait `Retry-After` and send again. The
    campaign outruns even the premium tier, and it is not about rate limits."""
    for _ in range(30):
        reply = send()
        if reply.status_code != 429:
            return reply
        wait = reply.headers.get("retry-after", "1")  # schemathesis: a list of values
        time.sleep(max(0.2, float(wait[0] if isinstance(wait, list) else wait)))
    return reply


# ---- property-based requests from the OpenAPI document ----------------------------------

SCHEMATHESIS_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
                       response_headers_conformance, response_schema_conformance]


def _cap(value: Any) -> Any:
    """A valid token count above 4 becomes 4; anything else (wrong types, out of range) stays."""
    return 4 if type(value) is int and 4 < value <= 256 else value


def _cheap(case: Any) -> Any:
    """Valid generations cost real model time: cap them at a few tokens."""
    body = case.body
    if isinstance(body, dict) and "text_input" in body:
        body["max_tokens"] = _cap(body.get("max_tokens", 4))
    if isinstance(body, dict) and "model" in body:  # the OpenAI routes
        body["max_tokens"] = _cap(body.get("max_tokens", 4))
        if "max_completion_tokens" in body:
            body["max_completion_tokens"] = _cap(body["max_completion_tokens"])
    if isinstance(body, dict) and isinstance(body.get("inputs"), list):
        for tensor in body["inputs"]:
            if isinstance(tensor, dict) and tensor.get("name") == "max_tokens" and \
                    isinstance(tensor.get("data"), list):
                tensor["data"] = [_cap(value) for value in tensor["data"]]
    return case


def _run_operation(operation: Any, mode: GenerationMode, examples: int, seed_value: int,
                   call: Callable[[Any], None]) -> None:
    strategy = operation.as_strategy(generation_mode=mode).map(_cheap)

    @seed(seed_value)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case: Any) -> None:
        call(case)

    run()


def test_property_based_requests_from_the_openapi_document_never_get_a_5xx(
        gateway, fuzz_key, campaign):
    schema = schemathesis.openapi.from_path(str(OPENAPI))
    session = requests.Session()
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        modes = [GenerationMode.POSITIVE]
        if operation.body:  # operations without inputs have nothing to break
            modes.append(GenerationMode.NEGATIVE)
        examples = campaign.examples if operation.body else max(2, campaign.examples // 6)
        for mode in modes:
            def call(case: Any, mode: GenerationMode = mode) -> None:
                reply = patiently(lambda: case.call(base_url=gateway.url, session=session,
                                                    headers=_headers(fuzz_key), timeout=60))
                TALLY.record(f"openapi-{mode.value}", reply.status_code)
                try:
                    case.validate_response(reply, checks=SCHEMATHESIS_CHECKS)
                except Exception as exc:  # schemathesis' failure group: keep every one
                    failures.append(f"{operation.label} ({mode.value}): {exc}"[:800])

            _run_operation(operation, mode, examples, campaign.seed, call)
    assert not failures, f"{len(failures)} answers break the contract:\n" + "\n".join(
        failures[:10])


# ---- hand-written corpus: bodies --------------------------------------------------------

@pytest.mark.parametrize("route", GENERATE_ROUTES)
@pytest.mark.parametrize("case", GENERATE, ids=[c.name for c in GENERATE])
def test_malformed_generate_bodies_get_a_documented_4xx(gateway, fuzz_key, campaign, route,
                                                       case: Case):
    reply = patiently(lambda: requests.post(
        gateway.url + route, data=fill(case.body, campaign.canary), timeout=60,
        headers=_headers(fuzz_key, **{"Content-Type": "application/json"})))
    TALLY.record("corpus-generate", reply.status_code)
    check_documented_error(reply.status_code, reply.headers.get("content-type", ""),
                           reply.content, case.status)


@pytest.mark.parametrize("case", INFER, ids=[c.name for c in INFER])
def test_malformed_infer_bodies_get_a_documented_4xx(gateway, fuzz_key, campaign, case: Case):
    reply = patiently(lambda: requests.post(
        gateway.url + "/v2/models/llm/infer", data=fill(case.body, campaign.canary),
        headers=_headers(fuzz_key), timeout=60))
    TALLY.record("corpus-infer", reply.status_code)
    check_documented_error(reply.status_code, reply.headers.get("content-type", ""),
                           reply.content, case.status)


# ---- content types and methods ----------------------------------------------------------

@pytest.mark.parametrize("content_type,body,status", [
    # Triton reads every body as JSON whatever its label: a JSON body is served.
    ("text/plain", b'{"text_input": "{P}", "max_tokens": 1}', 200),
    (None, b'{"text_input": "{P}", "max_tokens": 1}', 200),
    ("application/json; charset=utf-8", b'{"text_input": "{P}", "max_tokens": 1}', 200),
    ("application/x-www-form-urlencoded", b"text_input={P}&max_tokens=1", 400),
    ("multipart/form-data; boundary=xyz",
     b'--xyz\r\nContent-Disposition: form-data; name="text_input"\r\n\r\n{P}\r\n--xyz--\r\n', 400),
    ("application/xml", b"<generate><text_input>{P}</text_input></generate>", 400),
    ("application/json; charset=latin-1", b'{"text_input": "{P} caf\xe9", "max_tokens": 1}', 400),
    ("application/octet-stream", b"\x00\x01\x02\x03\xff", 400),
    ("application/grpc", b'{"text_input": "{P}", "max_tokens": 1}', 200),
])
@pytest.mark.parametrize("route", ["/generate", "/generate_stream"])
def test_content_types_are_not_trusted_and_non_json_gets_400(gateway, fuzz_key, campaign, route,
                                                            content_type, body, status):
    headers = _headers(fuzz_key)
    if content_type:
        headers["Content-Type"] = content_type
    reply = patiently(lambda: requests.post(gateway.url + route, timeout=60, headers=headers,
                                            data=fill(body, campaign.canary)))
    TALLY.record("content-type", reply.status_code)
    if status == 200:
        assert reply.status_code == 200, reply.text
    else:
        check_documented_error(reply.status_code, reply.headers.get("content-type", ""),
                               reply.content, status)


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/generate", 404),
    ("PUT", "/generate_stream", 404),
    ("GET", "/v2/models/llm/infer", 405),
    ("PUT", "/v2/models/llm/generate", 405),
    ("DELETE", "/v2/models/llm", 405),
    ("POST", "/v2/models/llm/ready", 405),
    ("PATCH", "/v2/models/llm/config", 405),
    ("OPTIONS", "/v2/health/ready", 405),
    ("POST", "/v2/models/llm_stream/infer", 404),  # decoupled: no unary infer
    ("POST", "/v2/models/llm/versions/99999999999999999999/infer", 400),
    ("GET", "/v2/models/llm/versions/7/ready", 400),
    ("POST", "/v2/models/LLM/generate", 404),
    ("GET", "/v2/models/llm/", 404),
    ("POST", "/generate/", 404),
    ("GET", "/v2/models/llm/../../v2/repository/index", 404),
])
def test_wrong_methods_and_paths_get_a_documented_4xx(gateway, fuzz_key, method, path, status):
    reply = patiently(lambda: requests.request(
        method, gateway.url + path, headers=_headers(fuzz_key), timeout=30,
        data=b'{"inputs": []}' if method != "GET" else None))
    TALLY.record("method-path", reply.status_code)
    if status == 404:
        assert_error_contract(reply, 404, "not_found")
    else:
        check_documented_error(reply.status_code, reply.headers.get("content-type", ""),
                               reply.content, status)


# ---- headers ----------------------------------------------------------------------------

@pytest.mark.parametrize("name,headers", [
    ("one-40-kib-header", {"X-Padding": "p" * 40_000}),
    ("150-small-headers", {f"X-H{i}": "v" for i in range(150)}),
    ("many-cookies", {"Cookie": "; ".join(f"c{i}={'x' * 60}" for i in range(600))}),
])
def test_oversized_headers_get_431_json(gateway, fuzz_key, name, headers):
    reply = requests.post(gateway.url + "/generate", json={"text_input": "x", "max_tokens": 1},
                          headers=_headers(fuzz_key, **headers), timeout=30)
    TALLY.record("headers", reply.status_code)
    assert_error_contract(reply, 431, "headers_too_large")


def test_an_oversized_url_gets_431_json(gateway, fuzz_key):
    reply = requests.get(gateway.url + "/v2/models/llm?" + "q" * 70_000,
                         headers=_headers(fuzz_key), timeout=30)
    TALLY.record("headers", reply.status_code)
    assert_error_contract(reply, 431, "headers_too_large")


@pytest.mark.parametrize("value", ["llmk_" + "0" * 40 + "\t", "Bearer", "é" * 10, "x" * 5000])
def test_odd_key_header_values_are_refused_not_crashed(gateway, value):
    reply = requests.post(gateway.url + "/generate", json={"text_input": "x"},
                          headers={"X-API-Key": value.encode("utf-8")}, timeout=30)
    TALLY.record("headers", reply.status_code)
    check_documented_error(reply.status_code, reply.headers.get("content-type", ""),
                           reply.content, {401, 403})


# ---- HTTP framing over raw sockets ------------------------------------------------------

def _raw(gateway: Any, data: bytes, timeout: float = 10.0) -> RawReply:
    return exchange(gateway.settings.host, gateway.settings.port, data, timeout)


def _framing_cases(key: str, prompt: str) -> dict[str, bytes]:
    body = json.dumps({"text_input": prompt, "max_tokens": 1}).encode()
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    auth = f"X-API-Key: {key}\r\n".encode()
    start = b"POST /generate HTTP/1.1\r\nHost: gateway\r\n" + auth

    def with_headers(*lines: bytes, payload: bytes = body) -> bytes:
        return start + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + payload

    length = b"Content-Length: %d" % len(body)
    return {
        "content-length-and-chunked": with_headers(length, b"Transfer-Encoding: chunked",
                                                   payload=chunked),
        "chunked-and-content-length": with_headers(b"Transfer-Encoding: chunked", length,
                                                   payload=chunked),
        "two-different-content-lengths": with_headers(b"Content-Length: 5", length),
        "two-equal-content-lengths": with_headers(length, length),
        "content-length-list": with_headers(b"Content-Length: %d, %d" % (len(body), len(body))),
        "negative-content-length": with_headers(b"Content-Length: -1"),
        "non-numeric-content-length": with_headers(b"Content-Length: ten"),
        "content-length-overflow": with_headers(b"Content-Length: 99999999999999999999999"),
        "content-length-shorter-than-body": with_headers(b"Content-Length: 10"),
        "bad-chunk-size": with_headers(b"Transfer-Encoding: chunked", payload=b"zz\r\nab\r\n0\r\n\r\n"),
        "chunk-size-overflow": with_headers(b"Transfer-Encoding: chunked",
                                            payload=b"fffffffffffffffffff\r\nab\r\n0\r\n\r\n"),
        "nul-in-header-value": with_headers(b"X-Note: a\x00b", length),
        "header-without-colon": with_headers(b"NoColonHere", length),
        "space-in-header-name": with_headers(b"Bad Name: x", length),
        "space-before-colon": with_headers(b"Content-Length : %d" % len(body)),
        "control-char-in-path": b"POST /gen\x01erate HTTP/1.1\r\nHost: g\r\n" + auth + length
                                + b"\r\n\r\n" + body,
        "non-ascii-path": b"GET /\xff\xfe HTTP/1.1\r\nHost: g\r\n" + auth + b"\r\n",
        "missing-host": b"POST /generate HTTP/1.1\r\n" + auth + length + b"\r\n\r\n" + body,
        "garbage-request-line": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
        "unknown-method": b"BREW /generate HTTP/1.1\r\nHost: g\r\n" + auth + b"\r\n",
        "lowercase-method": b"post /generate HTTP/1.1\r\nHost: g\r\n" + auth + length
                            + b"\r\n\r\n" + body,
    }


FRAMING = list(_framing_cases("k", "p"))


@pytest.mark.parametrize("name", FRAMING)
def test_broken_http_framing_gets_a_json_400(gateway, fuzz_key, campaign, name):
    reply = _raw(gateway, _framing_cases(fuzz_key, campaign.canary)[name])
    TALLY.record("http-framing", reply.status)
    check_documented_error(reply.status, reply.content_type, reply.body, {400, 404},
                           reply.headers)


@pytest.mark.parametrize("data", [
    b"POST /generate HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    b"2\r\n{}\r\n0\r\n\r\n",
    b"POST /generate HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: xchunked\r\n\r\n"
    b"2\r\n{}\r\n0\r\n\r\n",
    b"GET /healthz HTTP/1.0\r\n\r\n",
], ids=["unknown-transfer-coding", "transfer-coding-typo", "http-1.0"])
def test_unsupported_http_features_get_a_json_4xx(gateway, data):
    reply = _raw(gateway, data)
    TALLY.record("http-unsupported", reply.status)
    check_documented_error(reply.status, reply.content_type, reply.body, {400, 426},
                           reply.headers)


# ---- slow clients -----------------------------------------------------------------------

# (what the client sends first, what it adds every second or None for silence)
SLOW_CLIENTS = [
    (b"POST /gener", None),                                         # inside the request line
    (b"POST /gener", b"a"),                                         # ... a path without end
    (b"POST /generate HTTP/1.1\r\nHost: g\r\nX-API-Key: llmk_", None),  # inside a header
    (b"GET /healthz HTTP/1.1\r\nHost: g\r\n", b"X-Slow: 1\r\n"),     # never the blank line
]


def _slow_client(gateway: Any, opening: bytes, trickle: Optional[bytes],
                 out: list[RawReply]) -> None:
    """Send the start of a request and never finish its headers; see what the gateway does."""
    start = time.monotonic()
    with socket.create_connection((gateway.settings.host, gateway.settings.port),
                                  timeout=1.0) as sock:
        sock.sendall(opening)
        data = b""
        while time.monotonic() - start < 15:
            try:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            except socket.timeout:
                if trickle:
                    try:
                        sock.sendall(trickle)
                    except OSError:
                        break
            except OSError:
                break
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None
    head, _, body = data.partition(b"\r\n\r\n")
    headers = {name.strip().lower().decode(): value.strip().decode()
               for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])}
    out.append(RawReply(status, headers, body, time.monotonic() - start))


def test_slow_clients_get_408_within_12_s_and_do_not_block_others(gateway, fuzz_key, campaign):
    replies: list[RawReply] = []
    threads = [threading.Thread(target=_slow_client, args=(
        gateway, *SLOW_CLIENTS[i % len(SLOW_CLIENTS)], replies), daemon=True)
        for i in range(campaign.slow_clients)]
    for thread in threads:
        thread.start()
    # Normal traffic meanwhile: every request is served, promptly.
    latencies = []
    deadline = time.monotonic() + 9
    while time.monotonic() < deadline:
        began = time.monotonic()
        reply = patiently(lambda: requests.post(gateway.url + "/generate", timeout=10, json={
            "text_input": f"{campaign.canary} meanwhile", "max_tokens": 2},
            headers=_headers(fuzz_key)))
        latencies.append(time.monotonic() - began)
        TALLY.record("during-slow-clients", reply.status_code)
        assert reply.status_code == 200, reply.text
        time.sleep(0.2)
    for thread in threads:
        thread.join(20)
    assert len(replies) == campaign.slow_clients
    for reply in replies:
        TALLY.record("slow-client", reply.status)
        # Cut off after request_headers_timeout (10 s), with a JSON 408 or a plain close.
        assert reply.seconds < 13, f"a slow client was held {reply.seconds:.1f} s"
        if reply.status is not None:
            check_documented_error(reply.status, reply.content_type, reply.body, 408,
                                   reply.headers)
    assert max(latencies) < 5, f"normal requests slowed down: {max(latencies):.2f} s"


# ---- malformed gRPC ---------------------------------------------------------------------

def _tensor(name: str, datatype: str, shape: list[int], **contents: Any) -> Any:
    tensor = pb.ModelInferRequest().InferInputTensor(name=name, datatype=datatype, shape=shape)
    if contents:
        tensor.contents.CopyFrom(pb.InferTensorContents(**contents))
    return tensor


def _grpc_cases(prompt: bytes) -> dict[str, Any]:
    text = _tensor("text_input", "BYTES", [1, 1], bytes_contents=[prompt])

    def infer(*inputs: Any, model: str = "llm", **extra: Any) -> Any:
        return pb.ModelInferRequest(model_name=model, inputs=list(inputs), **extra)

    return {
        "no-inputs": infer(),
        "missing-text-input": infer(_tensor("max_tokens", "INT32", [1, 1], int_contents=[2])),
        "wrong-datatype": infer(_tensor("text_input", "INT32", [1, 1], int_contents=[3])),
        "unknown-datatype": infer(_tensor("text_input", "STRING", [1, 1], bytes_contents=[prompt])),
        "wrong-shape": infer(_tensor("text_input", "BYTES", [2, 1], bytes_contents=[prompt])),
        "rank-3-shape": infer(_tensor("text_input", "BYTES", [1, 1, 1], bytes_contents=[prompt])),
        "negative-shape": infer(_tensor("text_input", "BYTES", [-1, 1], bytes_contents=[prompt])),
        "scalar-shape": infer(_tensor("text_input", "BYTES", [], bytes_contents=[prompt])),
        "batch-over-32": infer(_tensor("text_input", "BYTES", [33, 1],
                                       bytes_contents=[prompt] * 33)),
        "no-contents": infer(_tensor("text_input", "BYTES", [1, 1])),
        "raw-contents-garbage": infer(_tensor("text_input", "BYTES", [1, 1]),
                                      raw_input_contents=[b"\xff\xff\xff\xff"]),
        "raw-and-typed-contents": infer(text, raw_input_contents=[b"\x01\x00\x00\x00x"]),
        "invalid-utf8": infer(_tensor("text_input", "BYTES", [1, 1],
                                      bytes_contents=[prompt + b"\xff\xfe"])),
        "nul-in-prompt": infer(_tensor("text_input", "BYTES", [1, 1],
                                       bytes_contents=[prompt + b"\x00"])),
        "empty-prompt": infer(_tensor("text_input", "BYTES", [1, 1], bytes_contents=[b""])),
        "unknown-input": infer(text, _tensor("zzz", "BYTES", [1, 1], bytes_contents=[b"x"])),
        "duplicate-input": infer(text, text),
        "max-tokens-negative": infer(text, _tensor("max_tokens", "INT32", [1, 1],
                                                   int_contents=[-5])),
        "temperature-nan": infer(text, _tensor("temperature", "FP32", [1, 1],
                                               fp32_contents=[float("nan")])),
        "seed-as-fp64": infer(text, _tensor("seed", "FP64", [1, 1], fp64_contents=[1.0])),
        "unknown-output": infer(text, outputs=[
            pb.ModelInferRequest().InferRequestedOutputTensor(name="nope")]),
        "unknown-model": infer(text, model="no_such_model"),
        "unknown-version": infer(text, model_version="7"),
        "decoupled-model-unary": infer(text, model="llm_stream"),
    }


GRPC_CASES = list(_grpc_cases(b"p"))


@pytest.fixture(scope="module")
def grpc_stub(gateway) -> Any:
    from tritonclient.grpc import service_pb2_grpc
    channel = grpc.insecure_channel(gateway.grpc_url)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel), channel
    channel.close()


def _grpc_error(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    """The status of a call that must fail; an empty bucket (RESOURCE_EXHAUSTED) is waited out."""
    for _ in range(30):
        try:
            call()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                return exc.code(), exc.details() or ""
            time.sleep(1)
        else:
            return grpc.StatusCode.OK, ""
    return grpc.StatusCode.RESOURCE_EXHAUSTED, "still rate limited"


def _assert_client_status(code: grpc.StatusCode, details: str) -> None:
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (code, details)
    assert code != grpc.StatusCode.OK
    assert details, code


@pytest.mark.parametrize("name", GRPC_CASES)
def test_malformed_grpc_infer_gets_a_client_error_status(grpc_stub, fuzz_key, campaign, name):
    stub, _ = grpc_stub
    message = _grpc_cases(campaign.canary.encode())[name]
    code, details = _grpc_error(lambda: stub.ModelInfer(
        message, metadata=[("x-api-key", fuzz_key)], timeout=30))
    TALLY.record("grpc", code.name)
    _assert_client_status(code, details)


def test_a_grpc_message_that_is_not_protobuf_gets_invalid_argument(grpc_stub, fuzz_key):
    _, channel = grpc_stub
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                               request_serializer=lambda raw: raw,
                               response_deserializer=lambda raw: raw)
    for garbage in (b"\xff\xff\xff\xff\x0f", b"\x0a\xff\xff\xff\xff\x0f", b"\x12" * 64):
        code, details = _grpc_error(lambda: call(garbage, metadata=[("x-api-key", fuzz_key)],
                                                 timeout=30))
        TALLY.record("grpc", code.name)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details


def test_malformed_requests_on_a_grpc_stream_get_error_responses_and_the_stream_goes_on(
        gateway, fuzz_key, campaign):
    errors: list[str] = []
    finished = threading.Event()

    def callback(result: Any, error: Any) -> None:
        if error is not None:
            errors.append(str(error))
        elif result.get_response().parameters["triton_final_response"].bool_param:
            finished.set()  # the good request's last response

    def tensor(name: str, array: np.ndarray, datatype: str) -> Any:
        t = grpcclient.InferInput(name, list(array.shape), datatype)
        t.set_data_from_numpy(array)
        return t

    prompt = np.array([[campaign.canary.encode()]], dtype=object)
    bad_requests = [
        [tensor("text_input", np.array([[1]], dtype=np.int32), "INT32")],      # wrong datatype
        [tensor("max_tokens", np.array([[2]], dtype=np.int32), "INT32")],      # missing input
        [tensor("text_input", np.array([[b"a", b"b"]], dtype=object), "BYTES")],  # wrong shape
        [tensor("text_input", prompt, "BYTES"),                               # out of range
         tensor("top_p", np.array([[3.0]], dtype=np.float32), "FP32")],
    ]
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    client.start_stream(callback=callback, headers={"x-api-key": fuzz_key})
    try:
        for inputs in bad_requests:
            client.async_stream_infer("llm_stream", inputs)
        client.async_stream_infer("llm_stream", [
            tensor("text_input", prompt, "BYTES"),
            tensor("max_tokens", np.array([[3]], dtype=np.int32), "INT32")],
            enable_empty_final_response=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (finished.is_set() and
                                                   len(errors) >= len(bad_requests)):
            time.sleep(0.05)
    finally:
        client.stop_stream()
    for error in errors:
        TALLY.record("grpc-stream", "error-response")
        assert "INTERNAL" not in error and "UNKNOWN" not in error and error.strip(), error
    assert len(errors) == len(bad_requests), errors
    assert finished.is_set(), "the valid request after the malformed ones never finished"
    TALLY.record("grpc-stream", "OK")


# ---- afterwards -------------------------------------------------------------------------

def test_the_service_is_still_ready_after_the_campaign(gateway, triton, fuzz_key, campaign):
    assert requests.get(gateway.url + "/readyz", timeout=5).status_code == 200
    assert requests.get(f"{triton.http_url}/v2/health/ready", timeout=5).status_code == 200
    reply = patiently(lambda: requests.post(
        gateway.url + "/generate", headers=_headers(fuzz_key), timeout=30,
        json={"text_input": f"{campaign.canary} after", "max_tokens": 3}))
    assert reply.status_code == 200 and reply.json()["num_output_tokens"] == 3
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    assert client.is_model_ready("llm", headers={"x-api-key": fuzz_key})
