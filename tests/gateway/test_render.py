"""The gateway's view of the model replicas and the rate-limit service, as rendered into Envoy's
config (pure: no Envoy here; tests/reliability/test_replicas.py and
tests/integration/test_global_limits.py run the real thing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.render import GatewaySettings, Replica, load_tiers, render_envoy_config
from ratelimit.contract import DESCRIPTORS, HEADER_OF, Entry, Kind
from ratelimit.limits import Bucket, TierLimits
from tools import runtime


def rendered(**env: str) -> dict[str, Any]:
    settings = GatewaySettings.from_env({"LLM_KEYS_DIR": "/tmp/keys", **env})
    return yaml.safe_load(render_envoy_config(settings, load_tiers()))


def clusters(config: dict[str, Any]) -> dict[str, Any]:
    return {c["name"]: c for c in config["static_resources"]["clusters"]}


def routes(config: dict[str, Any]) -> dict[str, Any]:
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    host = manager["typed_config"]["route_config"]["virtual_hosts"][0]
    return {r["name"]: r for r in host["routes"]}


def http_filter(config: dict[str, Any], name: str) -> dict[str, Any]:
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    return next(f for f in manager["typed_config"]["http_filters"] if f["name"] == name)


def test_a_malformed_replica_entry_is_refused_with_the_format_to_use() -> None:
    with pytest.raises(SystemExit, match="HOST:HTTP_PORT:GRPC_PORT:OPENAI_PORT"):
        Replica.parse_list("10.0.0.1:8000:8001", "GATEWAY_REPLICAS")
    assert Replica.parse_list(" a:1:2:3 , b:4:5:6 ", "X") == (Replica("a", 1, 2, 3),
                                                             Replica("b", 4, 5, 6))


def test_each_replica_gets_its_own_ports_and_run_dir_and_the_fallback_its_model(
        tmp_path: Path) -> None:
    settings = runtime.Settings.from_env({
        "LLM_RUN_DIR": str(tmp_path), "LLM_REPLICAS": "2", "LLM_FALLBACK_REPLICAS": "1",
        "LLM_FALLBACK_MODEL_DIR": str(tmp_path / "small")})
    pools = settings.pools()
    assert [pool for pool, _ in pools] == ["primary", "primary", "fallback"]
    assert [s.http_port for _, s in pools] == [8000, 8010, 8020]
    assert [s.openai_port for _, s in pools] == [8003, 8013, 8023]
    assert [s.run_dir for _, s in pools] == [tmp_path, tmp_path / "replica-1",
                                             tmp_path / "replica-2"]
    assert pools[2][1].model_dir == tmp_path / "small" and pools[0][1].model_dir != tmp_path


def test_replica_counts_must_be_whole_numbers() -> None:
    with pytest.raises(SystemExit, match="LLM_REPLICAS"):
        runtime.Settings.from_env({"LLM_REPLICAS": "0"})


def test_the_fallback_pool_is_a_lower_priority_tagged_with_its_pool() -> None:
    config = rendered(GATEWAY_REPLICAS="a:8000:8001:8003,b:8000:8001:8003",
                      GATEWAY_FALLBACK_REPLICAS="f:8000:8001:8003")
    for name, port in (("triton_http", 8000), ("triton_grpc", 8001), ("openai_frontend", 8003)):
        cluster = clusters(config)[name]
        assert cluster["lb_policy"] == "LEAST_REQUEST" and cluster["health_checks"]
        # No panic routing: with no healthy primary, the fallback, then a JSON 503.
        assert cluster["common_lb_config"]["healthy_panic_threshold"]["value"] == 0
        groups = cluster["load_assignment"]["endpoints"]
        assert [g["priority"] for g in groups] == [0, 1]
        hosts = [[(h["endpoint"]["address"]["socket_address"]["address"],
                   h["endpoint"]["address"]["socket_address"]["port_value"],
                   h["metadata"]["filter_metadata"]["llm"]["pool"]) for h in g["lb_endpoints"]]
                 for g in groups]
        assert hosts == [[("a", port, "primary"), ("b", port, "primary")],
                         [("f", port, "fallback")]]
        # One healthy primary keeps all the traffic (no spill-over by Envoy's 1.4 factor).
        assert cluster["load_assignment"]["policy"]["overprovisioning_factor"] >= 100_000
    grpc_host = clusters(config)["triton_grpc"]["load_assignment"]["endpoints"][0]
    assert grpc_host["lb_endpoints"][0]["endpoint"]["health_check_config"]["port_value"] == 8000


def test_a_single_replica_never_retries_a_503_but_several_retry_it_elsewhere() -> None:
    single = routes(rendered())["llm_http"]["route"]["retry_policy"]
    assert "retriable-status-codes" not in single["retry_on"]
    assert "connect-failure" in single["retry_on"]
    several = routes(rendered(GATEWAY_REPLICAS="a:1:2:3,b:1:2:3"))["llm_http"]["route"]
    policy = several["retry_policy"]
    assert policy["retriable_status_codes"] == [503]
    # Never a plain `reset`: a generation that started is not run twice.
    assert "reset" not in policy["retry_on"].split(",")
    assert policy["retry_host_predicate"][0]["name"].endswith("previous_hosts")


def test_the_rate_limit_descriptors_are_the_contracts() -> None:
    limits = http_filter(rendered(GATEWAY_RATELIMIT="rl:8081"),
                         "envoy.filters.http.ratelimit")["typed_config"]["rate_limits"]
    assert len(limits) == len(DESCRIPTORS)
    for rendered_limit, descriptor in zip(limits, DESCRIPTORS):
        first, *rest = rendered_limit["actions"]
        assert first["generic_key"] == {"descriptor_key": "kind",
                                        "descriptor_value": descriptor.kind.value}
        assert rendered_limit.get("apply_on_stream_done", False) == descriptor.on_stream_done
        for action, entry in zip(rest, descriptor.entries):
            if entry is Entry.USED:
                assert action["metadata"]["source"] == "DYNAMIC"
            else:
                assert action["request_headers"] == {"header_name": HEADER_OF[entry],
                                                     "descriptor_key": entry.value}
    assert [d.kind for d in DESCRIPTORS if d.on_stream_done] == [Kind.TOKENS_SETTLE]


def test_global_limits_are_off_unless_a_service_is_named_and_not_switched_off() -> None:
    def enabled(**env: str) -> int:
        config = http_filter(rendered(**env), "envoy.filters.http.ratelimit")["typed_config"]
        return config["filter_enabled"]["default_value"]["numerator"]
    assert enabled() == 0
    assert enabled(GATEWAY_RATELIMIT="rl:8081") == 100
    assert enabled(GATEWAY_RATELIMIT="rl:8081", GATEWAY_GLOBAL_LIMITS="0") == 0
    closed = http_filter(rendered(GATEWAY_RATELIMIT="rl:8081",
                                  GATEWAY_RATELIMIT_FAILURE_MODE="closed"),
                         "envoy.filters.http.ratelimit")["typed_config"]
    assert closed["failure_mode_deny"] is True
    with pytest.raises(SystemExit, match="open, closed"):
        rendered(GATEWAY_RATELIMIT_FAILURE_MODE="maybe")


def test_token_budgets_come_from_the_tiers_file(tmp_path: Path) -> None:
    limits = TierLimits.load()
    assert limits.tiers["test-tokens"].tokens == Bucket(300, 5.0)
    assert limits.tiers["benchmark"].tokens is None  # no token budget
    broken = tmp_path / "tiers.yaml"
    broken.write_text("tiers:\n  x: {requests_per_second: 1, burst: 1, tokens_per_minute: 0}\n"
                      "gateway: {requests_per_second: 1, burst: 1}\n")
    with pytest.raises(SystemExit, match="tokens_per_minute"):
        TierLimits.load(broken)


def test_a_bucket_says_how_long_until_it_holds_an_amount() -> None:
    bucket = Bucket(capacity=300, per_second=5)
    assert bucket.seconds_until(level=100, amount=150) == 10
    assert bucket.seconds_until(level=200, amount=150) == 0
    assert bucket.seconds_until(level=0, amount=1000) == 60  # capped at a full bucket
