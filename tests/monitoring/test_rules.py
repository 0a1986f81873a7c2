"""The rules and Prometheus's configuration, checked by Prometheus's own promtool: syntax,
and unit tests proving every alert both fires and stays quiet (monitoring/rules/)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from monitoring import prometheus

ROOT = prometheus.MONITORING_DIR.parent

RULES_DIR = prometheus.RULES.parent
PROMTOOL = shutil.which("promtool")


def promtool(*args: str) -> str:
    assert PROMTOOL, "promtool is missing: `make prometheus` (make test installs it first)"
    done = subprocess.run([str(PROMTOOL), *args], capture_output=True, text=True, timeout=120,
                          cwd=RULES_DIR)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_rules_are_valid():
    assert "SUCCESS" in promtool("check", "rules", str(prometheus.RULES))


def test_every_alert_has_unit_tests_that_pass():
    assert "SUCCESS" in promtool("test", "rules", "llm.rules.test.yaml")


def test_every_alert_is_tested_firing_and_not_firing():
    rules = yaml.safe_load(prometheus.RULES.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((RULES_DIR / "llm.rules.test.yaml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    firing = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert alerts - firing == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested quiet"
    assert (firing | quiet) - alerts == set(), "tests of alerts that do not exist"


def test_the_local_configuration_is_valid(tmp_path: Path):
    config = tmp_path / "prometheus.yml"
    config.write_text(prometheus.local_config(tmp_path / "targets", "127.0.0.1:9090"))
    assert "SUCCESS" in promtool("check", "config", str(config))


def test_the_compose_configuration_is_valid_and_current(tmp_path: Path):
    committed = prometheus.MONITORING_DIR / "prometheus.compose.yml"
    assert committed.read_text() == prometheus.compose_config(), (
        "monitoring/prometheus.compose.yml is stale: run `make docker-config` and commit it")
    # promtool reads the rules where the container mounts them: put them there.
    rules = tmp_path / "llm.rules.yaml"
    rules.write_text(prometheus.RULES.read_text())
    config = tmp_path / "prometheus.yml"
    config.write_text(committed.read_text().replace(prometheus.COMPOSE_RULES, str(rules)))
    assert "SUCCESS" in promtool("check", "config", str(config))


def test_the_kubernetes_prometheusrule_holds_the_rules_and_is_current(tmp_path: Path):
    committed = ROOT / "deploy" / "k8s" / "monitoring" / "prometheusrule.yaml"
    assert committed.read_text() == prometheus.prometheus_rule(), (
        "deploy/k8s/monitoring/prometheusrule.yaml is stale: run `make k8s-config`")
    resource = yaml.safe_load(committed.read_text())
    assert (resource["kind"], resource["metadata"]["namespace"]) == ("PrometheusRule", "llm")
    extracted = tmp_path / "rules.yaml"
    extracted.write_text(yaml.safe_dump({"groups": resource["spec"]["groups"]}))
    assert "SUCCESS" in promtool("check", "rules", str(extracted))
