"""What Prometheus scrapes: targets with their labels, written where it watches them."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from monitoring.prometheus import (Job, Service, Target, compose_config, local_config,
                                   remove_targets, replica_targets, write_targets)


def test_each_replica_gives_a_triton_and_a_frontend_target_labelled_by_pool_and_index():
    targets = replica_targets([("primary", "127.0.0.1", 8002, 8003),
                               ("fallback", "127.0.0.1", 8012, 8013)])
    assert targets == [
        Target(Job.TRITON, "127.0.0.1:8002", {"pool": "primary", "replica": "0"}),
        Target(Job.OPENAI, "127.0.0.1:8003", {"pool": "primary", "replica": "0"}),
        Target(Job.TRITON, "127.0.0.1:8012", {"pool": "fallback", "replica": "1"}),
        Target(Job.OPENAI, "127.0.0.1:8013", {"pool": "fallback", "replica": "1"})]


def test_targets_are_written_per_job_where_the_local_config_looks_and_removed(tmp_path: Path):
    write_targets(tmp_path, "gateway-8090", [Target(Job.GATEWAY, "127.0.0.1:9912")])
    written = tmp_path / "gateway-gateway-8090.json"
    assert json.loads(written.read_text()) == [{"targets": ["127.0.0.1:9912"], "labels": {}}]
    config = yaml.safe_load(local_config(tmp_path, "127.0.0.1:9090"))
    patterns = {job["job_name"]: job["file_sd_configs"][0]["files"][0]
                for job in config["scrape_configs"] if "file_sd_configs" in job}
    assert set(patterns) == {job.value for job in Job}
    assert written.match(Path(patterns["gateway"]).name)
    remove_targets(tmp_path, "gateway-8090")
    assert list(tmp_path.iterdir()) == []


def test_the_compose_config_finds_each_services_containers_and_labels_their_pool():
    config = yaml.safe_load(compose_config([Service(Job.TRITON, "triton", 8002, "primary"),
                                            Service(Job.GATEWAY, "gateway", 9902)]))
    assert config["rule_files"] == ["/etc/prometheus/llm.rules.yaml"]
    triton, gateway = config["scrape_configs"]
    assert triton["dns_sd_configs"] == [{"names": ["triton"], "type": "A", "port": 8002,
                                         "refresh_interval": "15s"}]
    assert {"source_labels": ["__meta_dns_name"], "regex": "triton", "target_label": "pool",
            "replacement": "primary"} in triton["relabel_configs"]
    assert "relabel_configs" not in gateway
