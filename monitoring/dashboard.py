"""The Grafana dashboard of the service, as code (grafana-foundation-sdk), not edited JSON.

`python -m monitoring.dashboard --out monitoring/grafana/llm-service.json` (`make
docker-config`) writes the JSON compose's Grafana provisions; `make test` fails when the
committed file differs, and checks against a running stack that every query names a metric the
stack exports (tests/integration/test_monitoring.py).

The panels follow vLLM's dashboard (latency percentiles and heatmaps, tokens/s, running and
waiting, KV cache, finish reasons, queue time) and add what this service has around the engine:
the gateway's latency and refusals by reason, each key's traffic (top N by key id), the pool
that answered, the OpenAI frontend, the shared limits and the health of every part.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from grafana_foundation_sdk.builders import heatmap, prometheus, stat, timeseries
from grafana_foundation_sdk.builders.dashboard import Dashboard, DatasourceVariable, Row
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

OUTPUT = Path(__file__).resolve().parent / "grafana" / "llm-service.json"
UID = "llm-service"
TOP_KEYS = 10  # per-key panels show the busiest keys only
GATEWAY = 'envoy_http_conn_manager_prefix="llm_gateway"'


class Kind(Enum):
    SERIES = "timeseries"
    HEATMAP = "heatmap"
    STAT = "stat"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: Kind = Kind.SERIES
    description: str = ""


def _percentiles(metric: str, by: str = "pool", selector: str = "") -> tuple[Query, ...]:
    """p50, p90 and p99 of a histogram, per `by` (nothing: over everything)."""
    group, legend = (f"{by}, le", f" {{{{{by}}}}}") if by else ("le", "")
    return tuple(Query(f"histogram_quantile({q}, sum by ({group}) "
                       f"(rate({metric}_bucket{selector}[$__rate_interval])))",
                       f"p{int(q * 100)}{legend}") for q in (0.5, 0.9, 0.99))


def _heatmap(metric: str) -> tuple[Query, ...]:
    return (Query(f"sum by (le) (increase({metric}_bucket[$__rate_interval]))", "{{le}}"),)


ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    ("Gateway", (
        Panel("Answers by status class", (
            Query(f"sum by (envoy_response_code_class) "
                  f"(rate(envoy_http_downstream_rq_xx{{{GATEWAY}}}[$__rate_interval]))",
                  "{{envoy_response_code_class}}xx"),), "reqps"),
        Panel("Gateway latency (whole answer, streams included)", _percentiles(
            "envoy_http_downstream_rq_time", by="", selector=f"{{{GATEWAY}}}"), "ms"),
        Panel("Refusals by reason", (
            Query("sum(rate(envoy_http_local_rate_limit_rate_limited[$__rate_interval]))",
                  "429 local bucket"),
            Query("sum(rate(envoy_cluster_ratelimit_over_limit[$__rate_interval]))",
                  "429 shared limit"),
            Query(f"sum(rate(envoy_http_fault_aborts_injected{{{GATEWAY}}}"
                  f"[$__rate_interval]))", "503 draining"),
            Query("sum by (reason) (rate(llm:request_rejections_total[$__rate_interval]))",
                  "engine: {{reason}}"),
            Query(f"sum(rate(envoy_http_downstream_rq_xx{{{GATEWAY},"
                  f"envoy_response_code_class=\"5\"}}[$__rate_interval]))", "5xx"),
        ), "reqps"),
        Panel("Pool share (answers finished per pool)", (
            Query("sum by (pool) (rate(vllm:e2e_request_latency_seconds_count"
                  "[$__rate_interval])) / ignoring(pool) group_left "
                  "sum(rate(vllm:e2e_request_latency_seconds_count[$__rate_interval]))",
                  "{{pool}}"),), "percentunit",
              description="Above 0 for `fallback`: no primary replica could answer."),
    )),
    ("Latency", (
        Panel("Time to first token", _percentiles("vllm:time_to_first_token_seconds"), "s"),
        Panel("Time per output token (inter-token latency)",
              _percentiles("vllm:time_per_output_token_seconds"), "s"),
        Panel("End-to-end request latency", _percentiles("vllm:e2e_request_latency_seconds"),
              "s"),
        Panel("Queue time", _percentiles("vllm:request_queue_time_seconds"), "s"),
        Panel("Prefill and decode time (p99)", (
            Query("histogram_quantile(0.99, sum by (pool, le) (rate("
                  "vllm:request_prefill_time_seconds_bucket[$__rate_interval])))",
                  "prefill {{pool}}"),
            Query("histogram_quantile(0.99, sum by (pool, le) (rate("
                  "vllm:request_decode_time_seconds_bucket[$__rate_interval])))",
                  "decode {{pool}}")), "s"),
        Panel("Time to first token (heatmap)", _heatmap("vllm:time_to_first_token_seconds"),
              kind=Kind.HEATMAP),
        Panel("Queue time (heatmap)", _heatmap("vllm:request_queue_time_seconds"),
              kind=Kind.HEATMAP),
        Panel("End-to-end latency (heatmap)", _heatmap("vllm:e2e_request_latency_seconds"),
              kind=Kind.HEATMAP),
    )),
    ("Engine", (
        Panel("Tokens per second", (
            Query("sum by (pool) (rate(vllm:prompt_tokens_total[$__rate_interval]))",
                  "prompt {{pool}}"),
            Query("sum by (pool) (rate(vllm:generation_tokens_total[$__rate_interval]))",
                  "generated {{pool}}")), "short"),
        Panel("Sequences running and waiting", (
            Query("sum by (pool) (vllm:num_requests_running)", "running {{pool}}"),
            Query("sum by (pool) (vllm:num_requests_waiting)", "waiting {{pool}}"))),
        Panel("KV cache (token budget) in use", (
            Query("vllm:kv_cache_usage_perc", "{{pool}} {{replica}}"),), "percentunit"),
        Panel("Finish reasons", (
            Query("sum by (finished_reason) (rate(vllm:request_success_total"
                  "[$__rate_interval]))", "{{finished_reason}}"),
            Query("sum(rate(llm:request_cancellations_total[$__rate_interval]))",
                  "cancelled (client left)")), "reqps"),
    )),
    ("Keys (by key id, never the key)", (
        Panel(f"Requests per second, top {TOP_KEYS} keys", (
            Query(f"topk({TOP_KEYS}, sum by (key_id) (rate(llm_gateway_key_requests_total"
                  f"[$__rate_interval])))", "{{key_id}}"),), "reqps"),
        Panel(f"Tokens per second, top {TOP_KEYS} keys", (
            Query(f"topk({TOP_KEYS}, sum by (key_id, kind) (rate(llm_gateway_key_tokens_total"
                  f"[$__rate_interval])))", "{{key_id}} {{kind}}"),), "short"),
        Panel(f"429s per second, top {TOP_KEYS} keys", (
            Query(f"topk({TOP_KEYS}, sum by (key_id) (rate(llm_gateway_key_requests_total"
                  f"{{outcome=\"rate_limited\"}}[$__rate_interval])))", "{{key_id}}"),), "reqps"),
    )),
    ("OpenAI frontend", (
        Panel("Answers by route and status", (
            Query("sum by (route, code) (rate(llm_openai_requests_total[$__rate_interval]))",
                  "{{route}} {{code}}"),), "reqps"),
        Panel("Time to first byte (p99)", (
            Query("histogram_quantile(0.99, sum by (stream, le) (rate("
                  "llm_openai_time_to_first_byte_seconds_bucket[$__rate_interval])))",
                  "stream={{stream}}"),), "s"),
        Panel("Streamed tokens per second", (
            Query("sum by (pool) (rate(llm_openai_streamed_tokens_total[$__rate_interval]))",
                  "{{pool}}"),), "short"),
    )),
    ("Shared limits", (
        Panel("Decisions by limit", (
            Query("sum by (limit, decision) (rate(llm_ratelimit_decisions_total"
                  "[$__rate_interval]))", "{{limit}} {{decision}}"),), "reqps"),
        Panel("Redis call time (p99)", (
            Query("histogram_quantile(0.99, sum by (call, le) (rate("
                  "llm_ratelimit_redis_seconds_bucket[$__rate_interval])))", "{{call}}"),), "s"),
        Panel("Redis reachable", (Query("min(llm_ratelimit_redis_up)", "redis up"),),
              kind=Kind.STAT),
    )),
    ("Health", (
        Panel("Targets up", (Query("sum by (job) (up)", "{{job}}"),), kind=Kind.STAT),
        Panel("Gateways draining", (Query("sum(llm_gateway_draining)", "draining"),),
              kind=Kind.STAT),
        Panel("Gateways enforcing the shared limits", (
            Query("sum(llm_gateway_global_limits_enabled)", "enforcing"),
            Query("count(llm_gateway_global_limits_enabled)", "gateways")), kind=Kind.STAT),
    )),
)


def _panel(spec: Panel, datasource: DataSourceRef):  # -> a builder of grafana-foundation-sdk
    builder = {Kind.SERIES: timeseries.Panel, Kind.HEATMAP: heatmap.Panel,
               Kind.STAT: stat.Panel}[spec.kind]()
    builder = builder.title(spec.title).datasource(datasource).height(8).span(8)
    if spec.description:
        builder = builder.description(spec.description)
    if spec.kind is not Kind.HEATMAP:
        builder = builder.unit(spec.unit)
    for index, query in enumerate(spec.queries):
        target = prometheus.Dataquery().expr(query.expr).ref_id(chr(ord("A") + index))
        if query.legend:
            target = target.legend_format(query.legend)
        if spec.kind is Kind.HEATMAP:
            target = target.format("heatmap")
        builder = builder.with_target(target)
    return builder


def build() -> dict:
    """The dashboard as Grafana's JSON model."""
    datasource = DataSourceRef(type_val="prometheus", uid="${datasource}")
    dashboard = (Dashboard("LLM service").uid(UID).tags(["llm", "triton", "envoy"])
                 .refresh("10s").time("now-1h", "now")
                 .with_variable(DatasourceVariable("datasource").label("Prometheus")
                                .type("prometheus")))
    for title, panels in ROWS:
        dashboard = dashboard.with_row(Row(title))
        for spec in panels:
            dashboard = dashboard.with_panel(_panel(spec, datasource))
    return json.loads(json.dumps(dashboard.build(), cls=JSONEncoder))


def render() -> str:
    return json.dumps(build(), indent=1, sort_keys=True) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.dashboard",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUTPUT)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
