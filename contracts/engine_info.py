"""What the model process chose at load, on Triton's metrics endpoint: `llm:engine_info`.

Why a metric: the OpenAI frontend (its `/v1/models`) and the runner (its banner) reach
Triton's metrics port, never the model process, and choices such as the dtype are only made
when the model loads (`dtype` `auto` times the CPU: textgen/core/dtypes.py). One series of
value 1 whose labels are the facts, as vLLM's `vllm:cache_config_info` does; Prometheus
scrapes it with the rest. Written by triton_llm/metrics.py, read with `parse`.
"""

from __future__ import annotations

import re
import urllib.request
from typing import Any, Mapping, Optional

NAME = "llm:engine_info"
# The `engine ready` facts (textgen's describe()) it carries, in this order.
LABELS = ("engine", "dtype", "dtype_reason", "executor", "forward_path")

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def labels(facts: Mapping[str, Any]) -> dict[str, str]:
    """The labels for `facts` (empty where the engine has no such fact, e.g. vLLM's
    executor)."""
    return {name: str(facts.get(name, "")) for name in LABELS}


def read(metrics_url: str, timeout: float = 2.0) -> Optional[dict[str, str]]:
    """The facts from Triton's metrics endpoint, or None where it cannot be reached or does not
    carry them yet (the model is still loading)."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=timeout) as reply:
            return parse(reply.read().decode())
    except OSError:
        return None


def parse(metrics_text: str) -> Optional[dict[str, str]]:
    """The facts of the first `llm:engine_info` series in Prometheus' text format, or None."""
    for line in metrics_text.splitlines():
        if line.startswith(NAME + "{"):
            found = {key: re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m.group(0)], value)
                     for key, value in _LABEL.findall(line[len(NAME):line.rindex("}")])}
            return {name: found.get(name, "") for name in LABELS}
    return None
