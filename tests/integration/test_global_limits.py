"""Limits and token quotas that hold across gateways: two real Envoys in front of the session's
Triton, sharing the real rate-limit service (ratelimit/) and a real redis-server.

What a platform team counts on: a key gets its tier's quota once however many gateways it
reaches; a token budget is reserved on arrival, charged what was really used when the answer
ends, and refused with 429 + Retry-After + x-ratelimit-* headers naming the token budget; one
key's spending leaves another's untouched; when Redis or the service is down the configured
policy holds (open: serve on local limits; closed: the JSON 503).
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import openai
import pytest
import redis
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.harness import assert_error_contract, infer_inputs, sample, scrape
from tools import runtime
from tools.processes import ServerProcess, free_port, gateway_process, http_ok

GENERATE = {"text_input": "The list", "max_tokens": 16, "ignore_eos": True}


@dataclass
class SharedLimits:
    redis_port: int
    service_port: int
    metrics_url: str  # the service's /metrics
    redis: ServerProcess
    service: ServerProcess
    urls: list[str]  # the two gateways sharing them
    keys: runtime.KeyStore

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.redis_port)


def _wait_for_redis(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="module")
def shared(triton: runtime.Settings, run_dir: Path) -> Iterator[SharedLimits]:
    redis_port, service_port, metrics_port = free_port(), free_port(), free_port()
    base = run_dir / "global-limits"
    redis_server = ServerProcess("redis", runtime.redis_command(redis_port, run_dir),
                                 {}, base / "redis.log")
    service = ServerProcess("ratelimit", runtime.ratelimit_command(service_port, redis_port,
                                                                metrics_port),
                            dict(os.environ), base / "ratelimit.log",
                            cwd=runtime.ROOT)
    gateways = [gateway_process(triton, name=f"envoy-global-{i}",
                                GATEWAY_RATELIMIT=f"127.0.0.1:{service_port}")
                for i in range(2)]
    processes = [redis_server, service] + [process for process, _ in gateways]
    try:
        redis_server.start()
        redis_server.wait_until(lambda: _wait_for_redis(redis_port), timeout=20)
        service.start()
        for process, settings in gateways:
            process.start()
        urls = [f"http://{s.host}:{s.port}" for _, s in gateways]
        for (process, _), url in zip(gateways, urls):
            process.wait_until(lambda: http_ok(url + "/readyz"), timeout=30)
        yield SharedLimits(redis_port, service_port, f"http://127.0.0.1:{metrics_port}/metrics",
                           redis_server, service, urls,
                           runtime.KeyStore(gateways[0][1].keys_dir))
    finally:
        for process in reversed(processes):
            process.stop(grace=5)


@contextmanager
def extra_gateway(shared: SharedLimits, triton: runtime.Settings, name: str,
                  **env: str) -> Iterator[runtime.GatewaySettings]:
    """One more gateway on the shared rate-limit service, ready, for the `with` block."""
    process, settings = gateway_process(
        triton, name=name, GATEWAY_RATELIMIT=f"127.0.0.1:{shared.service_port}", **env)
    process.start()
    try:
        process.wait_until(lambda: http_ok(f"http://{settings.host}:{settings.port}/readyz"),
                           timeout=30)
        yield settings
    finally:
        process.stop(grace=5)


def issue(shared: SharedLimits, name: str, tier: str) -> str:
    """A new key, once both gateways have loaded it."""
    key, _ = shared.keys.issue(name, tier)
    deadline = time.monotonic() + 10
    for url in shared.urls:
        while requests.get(url + "/v2/models/llm/config",
                           headers={"X-API-Key": key}, timeout=5).status_code in (401, 403):
            assert time.monotonic() < deadline, "the gateways did not load the new key"
            time.sleep(0.05)
    return key


def test_a_keys_request_limit_is_shared_by_two_gateways(shared: SharedLimits) -> None:
    # Tier `test`: a burst of 3, then 1 a second. Each gateway alone would allow 3 at once.
    key = issue(shared, "shared-requests", "test")
    time.sleep(3)  # the probes in issue() spent some of the bucket: let it refill
    replies = [requests.get(shared.urls[i % 2] + "/v2/models/llm/config",
                            headers={"X-API-Key": key}, timeout=5) for i in range(6)]
    statuses = [r.status_code for r in replies]
    assert statuses.count(200) <= 4 and statuses.count(429) >= 2, statuses
    refused = next(r for r in replies if r.status_code == 429)
    assert_error_contract(refused, 429, "rate_limited")
    assert int(refused.headers["retry-after"]) >= 1
    # The shared bucket, under OpenAI's names (x-ratelimit-* are the local first line's).
    assert refused.headers["x-ratelimit-limit-requests"] == "3"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"].endswith("s")


def test_the_service_counts_its_decisions_by_limit_and_times_redis(shared: SharedLimits) -> None:
    key = issue(shared, "counted", "test")
    time.sleep(3)  # the probes in issue() spent some of the buckets: let them refill
    before = scrape(shared.metrics_url)
    # Alternating gateways: each local bucket lets 3 through, the shared one refuses.
    statuses = [requests.get(shared.urls[i % 2] + "/v2/models/llm/config",
                             headers={"X-API-Key": key}, timeout=5).status_code
                for i in range(6)]
    after = scrape(shared.metrics_url)

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    allowed = grew("llm_ratelimit_decisions_total", limit="key_requests", decision="ok")
    refused = grew("llm_ratelimit_decisions_total", limit="key_requests", decision="over_limit")
    assert allowed == statuses.count(200) and 0 < refused <= statuses.count(429), statuses
    assert grew("llm_ratelimit_redis_seconds_count", call="take") == allowed + refused
    assert sample(after, "llm_ratelimit_redis_up") == 1


def test_each_keys_usage_is_counted_across_gateways_enforcing_or_not(
        shared: SharedLimits, triton: runtime.Settings) -> None:
    """The gateways stream their access logs to the service, which counts answers and tokens
    per key id: through both enforcing gateways, and through one that only reports."""
    with extra_gateway(shared, triton, "envoy-reporting", GATEWAY_GLOBAL_LIMITS="0") as reporting:
        url = f"http://{reporting.host}:{reporting.port}"
        key = issue(shared, "usage", "premium")
        key_id = next(k["id"] for k in shared.keys.load() if k["name"] == "usage")
        answers = [requests.post(base + "/generate", json=GENERATE, headers={"X-API-Key": key},
                                 timeout=60).json() for base in (*shared.urls, url)]
        refused = requests.post(url + "/generate", json={"text_input": "x", "max_tokens": 0},
                                headers={"X-API-Key": key}, timeout=60)
        assert refused.status_code == 400
        # Gateways flush their logs every second: wait for them before stopping one.
        deadline = time.monotonic() + 10
        while sample(usage := scrape(shared.metrics_url), "llm_gateway_key_requests_total",
                     key_id=key_id, outcome="refused") < 1 or sample(
                usage, "llm_gateway_key_tokens_total", key_id=key_id,
                kind="completion") < 3 * GENERATE["max_tokens"]:
            assert time.monotonic() < deadline, "the per-key usage did not arrive"
            time.sleep(0.2)
    # issue() made a config call through each enforcing gateway: ok answers, no tokens.
    assert sample(usage, "llm_gateway_key_requests_total", key_id=key_id, outcome="ok") == 5
    assert sample(usage, "llm_gateway_key_requests_total", key_id=key_id, outcome="refused") == 1
    assert sample(usage, "llm_gateway_key_tokens_total", key_id=key_id, kind="prompt") == sum(
        a["num_input_tokens"] for a in answers)
    assert sample(usage, "llm_gateway_key_tokens_total", key_id=key_id,
                  kind="completion") == sum(a["num_output_tokens"] for a in answers)


def test_token_quota_is_reserved_on_arrival_and_charged_what_was_used(
        shared: SharedLimits) -> None:
    key = issue(shared, "tokens-settle", "test-tokens")
    reply = requests.post(shared.urls[0] + "/generate", json=GENERATE,
                          headers={"X-API-Key": key}, timeout=30)
    assert reply.status_code == 200, reply.text
    used = reply.json()["num_input_tokens"] + reply.json()["num_output_tokens"]
    reserved = len(str(GENERATE).replace("'", '"')) + GENERATE["max_tokens"]
    # On arrival the answer's headers saw the reservation taken from a full budget of 300.
    assert reply.headers["x-ratelimit-limit-tokens"] == "300"
    assert 300 - reserved - 5 <= int(reply.headers["x-ratelimit-remaining-tokens"]) < 300 - used
    # Once the answer ended, the reservation was replaced by the real use (the bucket also
    # refills 5 tokens a second meanwhile).
    key_id = next(k["id"] for k in shared.keys.load() if k["name"] == "tokens-settle")
    deadline = time.monotonic() + 5
    while True:
        level = float(shared.client().hget(f"llm:rl:tokens:{key_id}", "level") or 0)
        if level >= 300 - used - 1:
            break
        assert time.monotonic() < deadline, f"the bucket stays at {level}, not ~{300 - used}"
        time.sleep(0.1)
    assert not shared.client().keys("llm:rl:reserved:*"), "a settled reservation is left"


def test_a_request_for_n_sequences_reserves_n_times_its_max_tokens(shared: SharedLimits) -> None:
    key = issue(shared, "tokens-n", "test-tokens")
    body = {**GENERATE, "max_tokens": 40, "n": 3}
    with requests.post(shared.urls[0] + "/generate_stream", json=body, stream=True,
                       headers={"X-API-Key": key}, timeout=30) as reply:
        assert reply.status_code == 200, reply.text
        remaining = int(reply.headers["x-ratelimit-remaining-tokens"])
        ends = [line for line in reply.iter_lines(decode_unicode=True)
                if "finish_reason" in line]
    assert len(ends) == 3
    reserved = len(json.dumps(body)) + 3 * 40
    # Taken from a full budget of 300 on arrival (a few tokens refill meanwhile).
    assert 300 - reserved - 2 <= remaining <= 300 - reserved + 5, (remaining, reserved)


def test_over_quota_key_gets_429_naming_the_token_budget_and_others_are_untouched(
        shared: SharedLimits) -> None:
    spender = issue(shared, "tokens-spender", "test-tokens")
    bystander = issue(shared, "tokens-bystander", "test-tokens")
    long = {**GENERATE, "max_tokens": 200}  # reserves ~250 of 300
    first = requests.post(shared.urls[0] + "/generate", json=long,
                          headers={"X-API-Key": spender}, timeout=60)
    assert first.status_code == 200, first.text
    # The answer used ~205 tokens: the next ~250 reservation does not fit, on either gateway.
    second = requests.post(shared.urls[1] + "/generate", json=long,
                           headers={"X-API-Key": spender}, timeout=60)
    body = assert_error_contract(second, 429, "rate_limited")
    assert "token quota" in body["error"] and "tokens per minute" in body["error"]
    assert int(second.headers["retry-after"]) >= 1
    assert second.headers["x-ratelimit-limit-tokens"] == "300"
    assert int(second.headers["x-ratelimit-remaining-tokens"]) < 250
    # Through the clients users have: tritonclient raises, and so does the openai SDK.
    client = httpclient.InferenceServerClient(shared.urls[0].removeprefix("http://"))
    with pytest.raises(InferenceServerException) as raised:
        client.infer("llm", infer_inputs(httpclient, "The list", max_tokens=200),
                     headers={"X-API-Key": spender})
    print(f"tritonclient: {raised.value}")
    assert "429" in str(raised.value.status()) or "token quota" in str(raised.value)
    sdk = openai.OpenAI(base_url=shared.urls[1] + "/v1", api_key=spender, max_retries=0)
    with pytest.raises(openai.RateLimitError) as limited:
        sdk.completions.create(model="demo_model", prompt="The list", max_tokens=200)
    print(f"openai: {limited.value}")
    # Another key's budget is its own.
    other = requests.post(shared.urls[1] + "/generate", json=long,
                          headers={"X-API-Key": bystander}, timeout=60)
    assert other.status_code == 200, other.text


def test_redis_down_fails_open_by_default_and_closed_when_configured(
        shared: SharedLimits, triton: runtime.Settings) -> None:
    key = issue(shared, "redis-down", "premium")
    with extra_gateway(shared, triton, "envoy-global-closed",
                       GATEWAY_RATELIMIT_FAILURE_MODE="closed") as closed_settings:
        closed_url = f"http://{closed_settings.host}:{closed_settings.port}"
        errors = sample(scrape(shared.metrics_url), "llm_ratelimit_redis_errors_total",
                        call="take")
        shared.redis.stop(grace=5)
        try:
            open_reply = requests.post(shared.urls[0] + "/generate", json=GENERATE,
                                       headers={"X-API-Key": key}, timeout=30)
            assert open_reply.status_code == 200, open_reply.text
            # The service says Redis is down, and the failed check is counted.
            down = scrape(shared.metrics_url)
            assert sample(down, "llm_ratelimit_redis_up") == 0
            assert sample(down, "llm_ratelimit_redis_errors_total", call="take") > errors
            # Each gateway says what it enforces, and how it fails.
            state = scrape(f"http://127.0.0.1:{closed_settings.metrics_port}/metrics")
            assert sample(state, "llm_gateway_global_limits_enabled",
                          ratelimit_service=f"127.0.0.1:{shared.service_port}",
                          failure_mode="closed") == 1
            refused = requests.post(closed_url + "/generate", json=GENERATE,
                                    headers={"X-API-Key": key}, timeout=30)
            assert_error_contract(refused, 503)
            assert "retry-after" in refused.headers
        finally:
            shared.redis.start()
            shared.redis.wait_until(lambda: _wait_for_redis(shared.redis_port), timeout=20)
    # Back with Redis: limits apply again (a fresh, full bucket).
    reply = requests.post(shared.urls[1] + "/generate", json=GENERATE,
                          headers={"X-API-Key": key}, timeout=30)
    assert reply.status_code == 200 and "x-ratelimit-remaining-tokens" in reply.headers


def test_the_rate_limit_service_answers_grpc_health_checks(shared: SharedLimits) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{shared.service_port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
