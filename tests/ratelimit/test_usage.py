"""Per-key usage from access-log entries: outcomes, token counts, and the cap on key ids."""

from __future__ import annotations

from envoy.data.accesslog.v3 import accesslog_pb2
from prometheus_client import CollectorRegistry

from ratelimit.usage import OTHER_KEYS, KeyUsage, outcome


def entry(key: str, status: int, prompt: str = "", completion: str = ""
          ) -> accesslog_pb2.HTTPAccessLogEntry:
    log = accesslog_pb2.HTTPAccessLogEntry()
    if key:
        log.request.request_headers["x-llm-key-id"] = key
    log.response.response_code.value = status
    if prompt or completion:
        usage = log.common_properties.metadata.filter_metadata["llm.usage"]
        usage.update({"prompt_tokens": prompt, "completion_tokens": completion})
    return log


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_outcomes_separate_rate_limits_from_other_refusals_and_failures():
    assert [outcome(s) for s in (200, 404, 429, 503, 0)] == [
        "ok", "refused", "rate_limited", "failed", "failed"]


def test_answers_and_tokens_are_counted_per_key_and_keyless_answers_not_at_all():
    registry = CollectorRegistry()
    usage = KeyUsage(registry)
    usage.count(entry("key_a", 200, "5", "16"))
    usage.count(entry("key_a", 429))
    usage.count(entry("", 401))  # no key: nothing to count it under
    assert value(registry, "llm_gateway_key_requests_total", key_id="key_a", outcome="ok") == 1
    assert value(registry, "llm_gateway_key_requests_total", key_id="key_a",
                 outcome="rate_limited") == 1
    assert value(registry, "llm_gateway_key_tokens_total", key_id="key_a", kind="prompt") == 5
    assert value(registry, "llm_gateway_key_tokens_total", key_id="key_a",
                 kind="completion") == 16
    assert sum(s.value for m in registry.collect() for s in m.samples
               if s.name == "llm_gateway_key_requests_total") == 2


def test_key_ids_beyond_the_cap_share_one_series():
    registry = CollectorRegistry()
    usage = KeyUsage(registry, max_keys=2)
    for key in ("key_a", "key_b", "key_c", "key_d", "key_a"):
        usage.count(entry(key, 200))
    assert value(registry, "llm_gateway_key_requests_total", key_id="key_a", outcome="ok") == 2
    assert value(registry, "llm_gateway_key_requests_total", key_id=OTHER_KEYS,
                 outcome="ok") == 2
    assert value(registry, "llm_gateway_key_requests_total", key_id="key_c", outcome="ok") == 0
