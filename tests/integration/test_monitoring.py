"""`make serve LLM_MONITORING=1`: a real Prometheus scraping the whole running service.

One stack as a platform team would run it: a primary replica and a fallback replica, the
shared limits (Redis and the rate-limit service) and Prometheus, all started by the runner
(tools/serve.py). The tests read Prometheus's own HTTP API, as Grafana and an operator do.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests

from monitoring.prometheus import Job
from tools import runtime
from tools.processes import ROOT, RunnerStack, ServerProcess, free_port, http_ok, runner_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunnerStack]:
    run_dir = tmp_path_factory.mktemp("monitoring")
    stack = runner_stack(run_dir, LLM_MONITORING="1", LLM_PROMETHEUS_PORT=str(free_port()),
                         LLM_FALLBACK_REPLICAS="1", LLM_GLOBAL_LIMITS="1",
                         LLM_REDIS_PORT=str(free_port()), LLM_RATELIMIT_PORT=str(free_port()),
                         LLM_RATELIMIT_METRICS_PORT=str(free_port()), LLM_DTYPE="float32")
    try:
        yield stack
    finally:
        stack.runner.stop(grace=60)


def api(stack: RunnerStack, path: str, **params: str) -> Any:
    reply = requests.get(f"http://127.0.0.1:{stack.settings.prometheus_port}/api/v1/{path}",
                         params=params, timeout=10)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["status"] == "success", body
    return body["data"]


def eventually(check: Callable[[], Any], timeout: float = 60, what: str = "") -> Any:
    """Poll until `check` returns something truthy; Prometheus scrapes every 5 s."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(1)
    return result


def up_targets(stack: RunnerStack) -> list[dict[str, Any]]:
    return [t for t in api(stack, "targets", state="active")["activeTargets"]
            if t["health"] == "up"]


def test_every_part_is_a_target_and_up_with_its_pool_and_replica(stack):
    expected = {(Job.TRITON.value, "primary", "0"), (Job.OPENAI.value, "primary", "0"),
                (Job.TRITON.value, "fallback", "1"), (Job.OPENAI.value, "fallback", "1"),
                (Job.GATEWAY.value, None, None), (Job.RATELIMIT.value, None, None),
                ("prometheus", None, None)}

    def seen() -> set[tuple[str, Any, Any]]:
        return {(t["labels"]["job"], t["labels"].get("pool"), t["labels"].get("replica"))
                for t in up_targets(stack)}

    eventually(lambda: seen() == expected, what=f"targets up: {seen()} != {expected}")
    # Nothing is down either: every active target is one of those, and up.
    active = api(stack, "targets", state="active")["activeTargets"]
    assert len(active) == len(expected), [(t["labels"], t["health"]) for t in active]


def test_the_rules_load_and_evaluate_without_errors(stack):
    def groups() -> list[dict[str, Any]]:
        found = api(stack, "rules")["groups"]
        evaluated = all(r.get("lastEvaluation", "").startswith("2") and
                        not r["lastEvaluation"].startswith("0001")
                        for g in found for r in g["rules"])
        return found if found and evaluated else []

    found = eventually(groups, what="every rule evaluated once")
    assert {g["name"] for g in found} == {"llm.recording", "llm.alerts"}
    broken = [(r["name"], r.get("lastError")) for g in found for r in g["rules"]
              if r["health"] != "ok"]
    assert broken == []


def test_traffic_shows_up_per_pool_and_through_every_layer(stack):
    headers = {"X-API-Key": stack.key}
    for _ in range(3):
        reply = requests.post(stack.url + "/generate", headers=headers, timeout=60,
                              json={"text_input": "The list", "max_tokens": 8,
                                    "ignore_eos": True})
        assert reply.status_code == 200, reply.text
    reply = requests.post(stack.url + "/v1/completions", headers=headers, timeout=60,
                          json={"model": "demo_model", "prompt": "The list", "max_tokens": 4,
                                "ignore_eos": True})
    assert reply.status_code == 200, reply.text

    def value(query: str) -> float:
        result = api(stack, "query", query=query)["result"]
        return float(result[0]["value"][1]) if result else 0.0

    # Every token is counted once, by whichever pool answered: under this machine's load the
    # gateway may route a request to the fallback when a primary looks unhealthy for a second.
    eventually(lambda: value("sum(vllm:generation_tokens_total)") >= 28,
               what="the engine's tokens, over both pools")
    eventually(lambda: value('sum(vllm:generation_tokens_total{pool="primary"})') > 0,
               what="the engine's tokens, labelled with the primary pool")
    # The frontend that answered counts it, under its own pool's label (either pool, as above).
    answered = eventually(lambda: [
        series["metric"].get("pool") for series in api(stack, "query", query=(
            'sum by (pool) (llm_openai_requests_total{route="/v1/completions",code="200"})'))[
            "result"] if float(series["value"][1]) >= 1], what="the frontend's answer")
    assert set(answered) <= {"primary", "fallback"}, answered
    eventually(lambda: value('sum(envoy_http_downstream_rq_xx{envoy_http_conn_manager_prefix='
                             '"llm_gateway",envoy_response_code_class="2"})') >= 4,
               what="the gateway's answers")
    eventually(lambda: value('sum(llm_ratelimit_decisions_total{limit="key_requests",'
                             'decision="ok"})') >= 4, what="the rate-limit service's checks")
    assert value("llm_ratelimit_redis_up") == 1
    # Both pools' engines report, each under its own label (the fallback may have answered
    # too, if a primary looked unhealthy for a second under this machine's load).
    pools = api(stack, "query", query="count by (pool) (vllm:generation_tokens_total)")
    assert {series["metric"]["pool"] for series in pools["result"]} == {"primary", "fallback"}


# PromQL words that are not metric names (functions and aggregations are followed by "(").
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                "offset", "and", "or", "unless"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: its identifiers once label matchers,
    ranges, grouping clauses and function calls are set aside."""
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", bare)
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*(?!\s*\()\b(?![A-Za-z0-9_:])", bare))
    return {n for n in names - PROMQL_WORDS if not re.search(rf"{re.escape(n)}\s*\(", bare)}


def test_every_dashboard_query_runs_and_names_only_metrics_the_stack_exports(stack):
    """Drive what makes every counter appear (answers, a stream, an engine refusal, a local
    and a shared 429), then run each panel's query against this stack's Prometheus."""
    from monitoring import dashboard

    headers = {"X-API-Key": stack.key}
    requests.post(stack.url + "/v1/completions", headers=headers, timeout=60,
                  json={"model": "demo_model", "prompt": "The list", "max_tokens": 4,
                        "stream": True}).raise_for_status()
    assert requests.post(stack.url + "/generate", headers=headers, timeout=60,
                         json={"text_input": "x", "max_tokens": 0}).status_code == 400
    keys = runtime.KeyStore(stack.gateway.keys_dir)
    local, _ = keys.issue("dashboard-local", "test")
    tokens, _ = keys.issue("dashboard-tokens", "test-tokens")
    time.sleep(2)  # the gateway watches its key directory
    assert 429 in [requests.get(stack.url + "/v2/models/llm/config", timeout=10,
                                headers={"X-API-Key": local}).status_code for _ in range(6)]
    big = {"text_input": "The list", "max_tokens": 200, "ignore_eos": True}
    assert 429 in [requests.post(stack.url + "/generate", json=big, timeout=60,
                                 headers={"X-API-Key": tokens}).status_code for _ in range(3)]

    exprs = [target["expr"] for panel in dashboard.build()["panels"]
             for target in panel.get("targets", [])]
    wanted = set().union(*map(metric_names, exprs))
    assert {"vllm:time_to_first_token_seconds_bucket", "llm_gateway_key_requests_total",
            "up"} <= wanted  # the extraction itself works

    def missing() -> set[str]:
        return wanted - set(api(stack, "label/__name__/values"))

    eventually(lambda: not missing(), timeout=90, what=f"series for {sorted(missing())}")
    for expr in exprs:
        api(stack, "query", query=expr.replace("$__rate_interval", "1m"))  # runs: status 200


def test_a_second_gateway_without_the_shared_limits_warns_is_scraped_and_alerts(stack, tmp_path):
    """As a new user would: `make gateway` beside a stack with global limits on, without
    LLM_GLOBAL_LIMITS=1. It says so when it starts, Prometheus finds it, and the rule that
    compares gateways goes pending (it fires after a minute)."""
    port = free_port()
    env = {**os.environ, "LLM_RUN_DIR": str(stack.settings.run_dir),
           "LLM_HTTP_PORT": str(stack.settings.http_port),
           "LLM_GRPC_PORT": str(stack.settings.grpc_port),
           "LLM_OPENAI_PORT": str(stack.settings.openai_port),
           "LLM_RATELIMIT_PORT": str(stack.settings.ratelimit_port),
           "LLM_KEYS_DIR": str(stack.gateway.keys_dir), "GATEWAY_PORT": str(port),
           "GATEWAY_ADMIN_PORT": str(free_port()), "GATEWAY_METRICS_PORT": str(free_port()),
           "LLM_DRAIN_TIMEOUT_S": "5"}
    for name in ("GATEWAY_ACCESS_LOG", "LLM_GLOBAL_LIMITS", "GATEWAY_RATELIMIT"):
        env.pop(name, None)
    second = ServerProcess("gateway-2", [sys.executable, "-m", "tools.serve", "gateway"], env,
                           tmp_path / "gateway-2.log", cwd=ROOT)
    second.start()
    try:
        second.wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), timeout=60)
        log = second.log.read_text()
        assert "limits: per-key local buckets only" in log
        assert "WARNING: a rate-limit service answers" in log

        def scraped() -> bool:
            return any(t["labels"]["job"] == "gateway" and t["scrapeUrl"].endswith(
                f":{env['GATEWAY_METRICS_PORT']}/metrics") for t in up_targets(stack))

        eventually(scraped, what="the second gateway among Prometheus's targets")
        eventually(lambda: [a for a in api(stack, "alerts")["alerts"]
                            if a["labels"]["alertname"] == "LLMGatewaysDisagreeOnLimits"],
                   what="LLMGatewaysDisagreeOnLimits pending")
    finally:
        second.stop(grace=20)
    targets = Path(stack.settings.run_dir) / "monitoring" / "targets"
    assert not list(targets.glob(f"*-gateway-{port}.json")), "its targets outlived it"


def test_the_banner_names_prometheus(stack):
    eventually(lambda: "the model is ready" in stack.runner.log.read_text(), what="banner")
    assert (f"Prometheus    http://127.0.0.1:{stack.settings.prometheus_port}"
            in stack.runner.log.read_text())
