"""benchmarks/gateway_usage.py's baseline gateway: the same rendered config with only the
usage filter's script emptied, still a config Envoy accepts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from benchmarks.gateway_usage import without_usage
from tools import runtime


def _usage_script(config: dict) -> str:
    listener = config["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    usage = next(f for f in manager["http_filters"] if f["name"] == "llm.usage")
    return usage["typed_config"]["default_source_code"]["inline_string"]


def test_the_baseline_differs_only_by_an_empty_usage_filter(tmp_path: Path):
    settings = runtime.Settings.from_env({"LLM_RUN_DIR": str(tmp_path)})
    config = runtime.prepare_gateway(runtime.gateway_settings(settings, {}), tmp_path)
    before = yaml.safe_load(config.read_text())
    assert "envoy_on_response" in _usage_script(before)
    without_usage(config)
    after = yaml.safe_load(config.read_text())
    assert "envoy_on_response" not in _usage_script(after)
    # Nothing else changed:
    listener = after["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    usage = next(f for f in listener["typed_config"]["http_filters"] if f["name"] == "llm.usage")
    usage["typed_config"]["default_source_code"]["inline_string"] = _usage_script(before)
    assert after == before
    checked = subprocess.run([str(runtime._ENVOY), "--mode", "validate", "-c", str(config)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr[-2000:]
