"""Who gets in: every gateway route and Triton's whole HTTP and gRPC API, with no key, an
unknown key, a revoked key and a valid key, against the policy table below (also in
tests/robustness/README.md); Triton's own admin-key wall when reached directly; and a scan of
every log the session wrote for key material and prompt text.

Policies (through the gateway):
  public  no key needed; a bad key is ignored              -> 200 in every case
  key     no key 401 / UNAUTHENTICATED, unknown or revoked key 403 / PERMISSION_DENIED,
          valid key served (200 / OK)
  hidden  not routed: the key is still checked first (401 / 403 as above), and a valid key
          gets 404 not_found / UNIMPLEMENTED, so nothing reaches Triton
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Optional

import grpc
import pytest
import requests
from tritonclient.grpc import service_pb2 as pb, service_pb2_grpc

from contracts.errors import OPENAI_PATH_PREFIXES
from tests.harness import assert_error_contract

# A prompt no other text contains, so the log scan can look for it.
PROMPT = f"Marzipan-heliotrope-authz-{secrets.token_hex(4)}"
GENERATE_BODY = {"text_input": PROMPT, "max_tokens": 1}
INFER_BODY = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1, 1],
                          "data": [PROMPT]}]}


OPENAI_COMPLETION = {"model": "demo_model", "prompt": PROMPT, "max_tokens": 1}
OPENAI_CHAT = {"model": "demo_model", "max_tokens": 1,
               "messages": [{"role": "user", "content": PROMPT}]}


class Route(NamedTuple):
    method: str
    path: str
    policy: str  # public | key | hidden
    body: Optional[dict] = None


# ---- the HTTP policy table --------------------------------------------------------------

HTTP_ROUTES = [
    # The gateway's own routes.
    Route("GET", "/healthz", "public"),
    Route("GET", "/readyz", "public"),
    Route("POST", "/generate", "key", GENERATE_BODY),
    Route("POST", "/generate_stream", "key", GENERATE_BODY),
    # KServe v2 for `llm` (and `llm_stream`'s metadata), server metadata and health.
    Route("GET", "/v2", "key"),
    Route("GET", "/v2/health/live", "key"),
    Route("GET", "/v2/health/ready", "key"),
    Route("GET", "/v2/models/llm", "key"),
    Route("GET", "/v2/models/llm/versions/1", "key"),
    Route("GET", "/v2/models/llm/config", "key"),
    Route("GET", "/v2/models/llm/ready", "key"),
    Route("GET", "/v2/models/llm/stats", "key"),
    Route("POST", "/v2/models/llm/infer", "key", INFER_BODY),
    Route("POST", "/v2/models/llm/versions/1/infer", "key", INFER_BODY),
    Route("POST", "/v2/models/llm/generate", "key", GENERATE_BODY),
    Route("POST", "/v2/models/llm/generate_stream", "key", GENERATE_BODY),
    Route("GET", "/v2/models/llm_stream", "key"),
    Route("GET", "/v2/models/llm_stream/ready", "key"),
    # The OpenAI-compatible API (errors in OpenAI's shape); other /v1 paths are the
    # frontend's 404s.
    Route("GET", "/v1/models", "key"),
    Route("GET", "/v1/models/demo_model", "key"),
    Route("POST", "/v1/completions", "key", OPENAI_COMPLETION),
    Route("POST", "/v1/chat/completions", "key", OPENAI_CHAT),
    Route("POST", "/tokenize", "key", {"model": "demo_model", "prompt": PROMPT}),
    Route("POST", "/detokenize", "key", {"model": "demo_model", "tokens": [264, 548]}),
    Route("POST", "/v1/embeddings", "hidden", {"model": "demo_model", "input": PROMPT}),
    Route("GET", "/v1/files", "hidden"),
    # The rest of Triton's HTTP API: model repository, statistics of every model, shared
    # memory, tracing, logging, metrics, other models, unary infer of the streaming model.
    Route("GET", "/v2/models/stats", "hidden"),
    Route("POST", "/v2/repository/index", "hidden", {}),
    Route("POST", "/v2/repository/models/no_such_model/load", "hidden", {}),
    Route("POST", "/v2/repository/models/no_such_model/unload", "hidden", {}),
    Route("GET", "/v2/systemsharedmemory/status", "hidden"),
    Route("GET", "/v2/systemsharedmemory/region/authz/status", "hidden"),
    Route("POST", "/v2/systemsharedmemory/region/authz/register", "hidden",
          {"key": "/authz", "offset": 0, "byte_size": 64}),
    Route("POST", "/v2/systemsharedmemory/region/authz/unregister", "hidden", {}),
    Route("POST", "/v2/systemsharedmemory/unregister", "hidden", {}),
    Route("GET", "/v2/cudasharedmemory/status", "hidden"),
    Route("GET", "/v2/cudasharedmemory/region/authz/status", "hidden"),
    Route("POST", "/v2/cudasharedmemory/region/authz/register", "hidden",
          {"raw_handle": {"b64": ""}, "device_id": 0, "byte_size": 64}),
    Route("POST", "/v2/cudasharedmemory/region/authz/unregister", "hidden", {}),
    Route("POST", "/v2/cudasharedmemory/unregister", "hidden", {}),
    Route("GET", "/v2/trace/setting", "hidden"),
    Route("POST", "/v2/trace/setting", "hidden", {"trace_level": ["TIMESTAMPS"]}),
    Route("GET", "/v2/models/llm/trace/setting", "hidden"),
    Route("POST", "/v2/models/llm/trace/setting", "hidden", {"trace_rate": "1"}),
    Route("GET", "/v2/logging", "hidden"),
    Route("POST", "/v2/logging", "hidden", {"log_verbose_level": 1}),
    Route("GET", "/metrics", "hidden"),
    Route("GET", "/v2/models/other", "hidden"),
    Route("POST", "/v2/models/other/infer", "hidden", INFER_BODY),
    Route("POST", "/v2/models/llm_stream/infer", "hidden", INFER_BODY),
]

# Status and error type by policy and key state; `None` for key routes' valid key means
# "served": 200.
HTTP_POLICY = {
    "public": {"none": 200, "unknown": 200, "revoked": 200, "valid": 200, "bearer": 200},
    "key": {"none": 401, "unknown": 403, "revoked": 403, "valid": 200, "bearer": 200},
    "hidden": {"none": 401, "unknown": 403, "revoked": 403, "valid": 404, "bearer": 404},
}
ERROR_TYPES = {401: "unauthenticated", 403: "forbidden", 404: "not_found"}


# ---- the gRPC policy table --------------------------------------------------------------

def _infer_request(model: str = "llm") -> Any:
    tensor = pb.ModelInferRequest().InferInputTensor(
        name="text_input", datatype="BYTES", shape=[1, 1],
        contents=pb.InferTensorContents(bytes_contents=[PROMPT.encode()]))
    tokens = pb.ModelInferRequest().InferInputTensor(
        name="max_tokens", datatype="INT32", shape=[1, 1],
        contents=pb.InferTensorContents(int_contents=[1]))
    return pb.ModelInferRequest(model_name=model, inputs=[tensor, tokens])


GRPC_METHODS: dict[str, tuple[str, Any]] = {
    "ServerLive": ("key", pb.ServerLiveRequest()),
    "ServerReady": ("key", pb.ServerReadyRequest()),
    "ServerMetadata": ("key", pb.ServerMetadataRequest()),
    "ModelMetadata": ("key", pb.ModelMetadataRequest(name="llm")),
    "ModelConfig": ("key", pb.ModelConfigRequest(name="llm")),
    "ModelReady": ("key", pb.ModelReadyRequest(name="llm")),
    "ModelInfer": ("key", _infer_request()),
    "ModelStreamInfer": ("key", _infer_request("llm_stream")),
    "ModelStatistics": ("key", pb.ModelStatisticsRequest(name="llm")),
    "RepositoryIndex": ("hidden", pb.RepositoryIndexRequest()),
    "RepositoryModelLoad": ("hidden", pb.RepositoryModelLoadRequest(model_name="no_such_model")),
    "RepositoryModelUnload": ("hidden",
                              pb.RepositoryModelUnloadRequest(model_name="no_such_model")),
    "SystemSharedMemoryStatus": ("hidden", pb.SystemSharedMemoryStatusRequest()),
    "SystemSharedMemoryRegister": ("hidden", pb.SystemSharedMemoryRegisterRequest(
        name="authz", key="/authz", offset=0, byte_size=64)),
    "SystemSharedMemoryUnregister": ("hidden", pb.SystemSharedMemoryUnregisterRequest(
        name="authz")),
    "CudaSharedMemoryStatus": ("hidden", pb.CudaSharedMemoryStatusRequest()),
    "CudaSharedMemoryRegister": ("hidden", pb.CudaSharedMemoryRegisterRequest(
        name="authz", raw_handle=b"", device_id=0, byte_size=64)),
    "CudaSharedMemoryUnregister": ("hidden", pb.CudaSharedMemoryUnregisterRequest(name="authz")),
    "TraceSetting": ("hidden", pb.TraceSettingRequest()),
    "LogSettings": ("hidden", pb.LogSettingsRequest()),
}

GRPC_POLICY = {
    "key": {"none": "UNAUTHENTICATED", "unknown": "PERMISSION_DENIED",
            "revoked": "PERMISSION_DENIED", "valid": "OK"},
    "hidden": {"none": "UNAUTHENTICATED", "unknown": "PERMISSION_DENIED",
               "revoked": "PERMISSION_DENIED", "valid": "UNIMPLEMENTED"},
}


# ---- keys -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keys(gateway) -> dict[str, Optional[str]]:
    """One key per state: none, unknown (well-formed, never issued), revoked, valid."""
    valid = gateway.issue("authz-valid", "premium")
    revoked = gateway.issue("authz-revoked", "premium")
    gateway.revoke("authz-revoked")
    return {"none": None, "unknown": "llmk_" + secrets.token_hex(20), "revoked": revoked,
            "valid": valid}


def _http_headers(keys: dict[str, Optional[str]], state: str) -> dict[str, str]:
    if state == "bearer":
        return {"Authorization": f"Bearer {keys['valid']}"}
    key = keys[state]
    return {} if key is None else {"X-API-Key": key}


@pytest.mark.parametrize("state", ["none", "unknown", "revoked", "valid", "bearer"])
@pytest.mark.parametrize("route", HTTP_ROUTES, ids=[f"{r.method} {r.path}" for r in HTTP_ROUTES])
def test_http_route_answers_by_policy(gateway, keys, route: Route, state: str):
    expected = HTTP_POLICY[route.policy][state]
    reply = requests.request(route.method, gateway.url + route.path,
                             headers=_http_headers(keys, state), json=route.body, timeout=30)
    if expected == 200:
        assert reply.status_code == 200, reply.text[:300]
        return
    if route.path.startswith(OPENAI_PATH_PREFIXES):
        message = assert_openai_error(reply, expected, ERROR_TYPES[expected])
    else:
        message = assert_error_contract(reply, expected, ERROR_TYPES[expected])["error"]
    if expected == 401:
        assert reply.headers["www-authenticate"] == 'Bearer realm="llm"'
    if expected == 403:
        assert message.startswith("the API key is not valid")


def assert_openai_error(reply: requests.Response, status: int, code: str) -> str:
    """OpenAI's error shape, the contract's type as its `code`, the request id in the header."""
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, error
    assert reply.headers["x-request-id"]
    return error["message"]


@pytest.fixture(scope="module")
def grpc_stub(gateway) -> Iterator[Any]:
    channel = grpc.insecure_channel(gateway.grpc_url)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def _grpc_status(stub: Any, method: str, message: Any, metadata: list[tuple[str, str]]) -> str:
    try:
        if method == "ModelStreamInfer":
            answers = list(stub.ModelStreamInfer(iter([message]), metadata=metadata, timeout=30))
            assert answers and not any(a.error_message for a in answers), answers
        else:
            getattr(stub, method)(message, metadata=metadata, timeout=30)
        return "OK"
    except grpc.RpcError as exc:
        return exc.code().name


@pytest.mark.parametrize("state", ["none", "unknown", "revoked", "valid"])
@pytest.mark.parametrize("method", list(GRPC_METHODS))
def test_grpc_method_answers_by_policy(grpc_stub, keys, method: str, state: str):
    policy, message = GRPC_METHODS[method]
    metadata = [] if keys[state] is None else [("x-api-key", keys[state])]
    assert _grpc_status(grpc_stub, method, message, metadata) == GRPC_POLICY[policy][state]


def test_the_tables_cover_tritons_whole_grpc_service():
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert sorted(GRPC_METHODS) == sorted(method.name for method in service.methods)


# ---- Triton itself: the admin-key wall on its restricted APIs ---------------------------

RESTRICTED_HTTP_READS = [
    ("POST", "/v2/repository/index"),
    ("GET", "/v2/systemsharedmemory/status"),
    ("GET", "/v2/cudasharedmemory/status"),
    ("GET", "/v2/trace/setting"),
    ("GET", "/v2/logging"),
]
RESTRICTED_HTTP_WRITES = [
    ("POST", "/v2/repository/models/no_such_model/load"),
    ("POST", "/v2/repository/models/no_such_model/unload"),
    ("POST", "/v2/systemsharedmemory/unregister"),
    ("POST", "/v2/logging"),
]
RESTRICTED_GRPC_READS = {
    "RepositoryIndex": pb.RepositoryIndexRequest(),
    "SystemSharedMemoryStatus": pb.SystemSharedMemoryStatusRequest(),
    "CudaSharedMemoryStatus": pb.CudaSharedMemoryStatusRequest(),
    "TraceSetting": pb.TraceSettingRequest(),
    "LogSettings": pb.LogSettingsRequest(),
}
RESTRICTED_GRPC_WRITES = {
    "RepositoryModelLoad": pb.RepositoryModelLoadRequest(model_name="no_such_model"),
    "RepositoryModelUnload": pb.RepositoryModelUnloadRequest(model_name="no_such_model"),
    "SystemSharedMemoryUnregister": pb.SystemSharedMemoryUnregisterRequest(name="authz"),
    "CudaSharedMemoryUnregister": pb.CudaSharedMemoryUnregisterRequest(name="authz"),
}


@pytest.mark.parametrize("method,path", RESTRICTED_HTTP_READS + RESTRICTED_HTTP_WRITES)
@pytest.mark.parametrize("admin_key", [None, "wrong-admin-key"])
def test_triton_http_refuses_restricted_apis_without_the_admin_key(triton, method, path,
                                                                  admin_key):
    headers = {} if admin_key is None else {"admin-key": admin_key}
    reply = requests.request(method, triton.http_url + path, headers=headers, json={},
                             timeout=10)
    assert reply.status_code == 403
    assert reply.json() == {"error": "This API is restricted, expecting header 'admin-key'"}


@pytest.mark.parametrize("method,path", RESTRICTED_HTTP_READS)
def test_triton_http_serves_restricted_reads_with_the_admin_key(triton, method, path):
    reply = requests.request(method, triton.http_url + path,
                             headers={"admin-key": triton.admin_key}, timeout=10)
    assert reply.status_code == 200, reply.text
    if path == "/v2/repository/index":
        assert {m["name"] for m in reply.json()} >= {"llm", "llm_stream"}


@pytest.fixture(scope="module")
def triton_stub(triton) -> Iterator[Any]:
    channel = grpc.insecure_channel(triton.grpc_url)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


@pytest.mark.parametrize("method", list(RESTRICTED_GRPC_READS) + list(RESTRICTED_GRPC_WRITES))
@pytest.mark.parametrize("admin_key", [None, "wrong-admin-key"])
def test_triton_grpc_refuses_restricted_apis_without_the_admin_key(triton_stub, method,
                                                                  admin_key):
    message = {**RESTRICTED_GRPC_READS, **RESTRICTED_GRPC_WRITES}[method]
    metadata = [] if admin_key is None else [("triton-grpc-protocol-admin-key", admin_key)]
    assert _grpc_status(triton_stub, method, message, metadata) == "UNAVAILABLE"


@pytest.mark.parametrize("method", list(RESTRICTED_GRPC_READS))
def test_triton_grpc_serves_restricted_reads_with_the_admin_key(triton_stub, triton, method):
    metadata = [("triton-grpc-protocol-admin-key", triton.admin_key)]
    assert _grpc_status(triton_stub, method, RESTRICTED_GRPC_READS[method], metadata) == "OK"


# ---- logs hold no key material and no prompt text ---------------------------------------

HEX40 = re.compile(rb"(?<![0-9a-f])[0-9a-f]{40}(?![0-9a-f])")
ANY_KEY = re.compile(rb"llmk_[0-9a-f]{40}")
# Prompts the tests send on purpose, distinctive enough never to appear by chance.
KNOWN_PROMPTS = ["Ultraviolet pangolin sonata"]


def _session_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file() and not path.is_symlink()
            and "backends" not in path.parts and path.stat().st_size < 256 * 1024 * 1024]


def scan_for_secrets(root: Path, needles: list[bytes]) -> list[str]:
    """Every place under `root` that holds a session key (any key whose digest a key store
    under `root` keeps, with or without its `llmk_` prefix) or one of `needles`."""
    digests = set()
    for store in root.rglob("keys.json"):
        digests |= {record["sha256"] for record in json.loads(store.read_text())["keys"]}
    findings = []
    for path in _session_files(root):
        data = path.read_bytes()
        if path.name != "keys.json":
            findings += [f"{path}: a key (llmk_...)" for _ in ANY_KEY.findall(data)]
        for candidate in set(HEX40.findall(data)):
            if hashlib.sha256(b"llmk_" + candidate).hexdigest() in digests:
                findings.append(f"{path}: a key of the session without its prefix")
        findings += [f"{path}: {needle[:16]!r}..." for needle in needles if needle in data]
    return findings


def test_the_log_scan_finds_what_it_looks_for():
    # Outside the session's temporary folder, which the real scan reads.
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        key = "llmk_" + secrets.token_hex(20)
        (root / "keys.json").write_text(json.dumps({"keys": [{"sha256": hashlib.sha256(
            key.encode()).hexdigest()}]}))
        (root / "a.log").write_text(f"ok\nkey={key[5:]}\n")
        (root / "b.log").write_text(f"the prompt {PROMPT}")
        (root / "c.log").write_text(f'{{"x": "llmk_{secrets.token_hex(20)}"}}')
        (root / "clean.log").write_text("request_id=" + secrets.token_hex(16))
        findings = scan_for_secrets(root, [PROMPT.encode()])
    assert sorted(Path(f.split(":")[0]).name for f in findings) == ["a.log", "b.log", "c.log"]


@pytest.mark.log_scan
def test_no_log_written_in_the_session_holds_a_key_or_a_prompt(
        tmp_path_factory, run_dir, gateway, triton_log, keys, api_key, fuzz_key, campaign):
    time.sleep(1.0)  # the access log is flushed every 500 ms
    root = tmp_path_factory.getbasetemp()
    logs = [path for path in _session_files(root) if path.suffix == ".log"]
    for log in (gateway.access_log, triton_log, run_dir / "envoy" / "envoy.log"):
        assert log in logs, f"{log} was not written"
    assert gateway.access_log.stat().st_size > 0 and triton_log.stat().st_size > 0
    assert list(root.rglob("keys.json")), "no key store to take the session's keys from"
    known = [key for key in (keys["valid"], keys["revoked"], api_key, fuzz_key) if key]
    needles = [k.encode() for k in known] + [k[5:].encode() for k in known]
    needles += [p.encode() for p in (PROMPT, campaign.canary, *KNOWN_PROMPTS)]
    findings = scan_for_secrets(root, needles)
    assert not findings, "\n".join(findings[:20])
