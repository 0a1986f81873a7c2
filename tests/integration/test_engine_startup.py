"""What the served engine says about itself at start-up: the executor it picked for the demo
model, how its decode step runs, and the priority its thread runs at (the start-up log line is how operators see both)."""

from __future__ import annotations

import json
import os
import re
import resource
from pathlib import Path


def engine_ready(triton_log: Path) -> dict:
    line = next(l for l in triton_log.read_text().splitlines() if "llm: engine ready" in l)
    return json.loads(re.search(r"engine ready (\{.*\})", line.encode().decode("unicode_escape"))
                      .group(1))


def test_demo_model_is_served_by_the_lean_llama_executor_with_its_c_decode_step(triton,
                                                                                triton_log):
    ready = engine_ready(triton_log)
    assert (ready["executor"], ready["decode_step"]) == ("llama", "c")


def test_engine_thread_runs_above_the_token_path_or_says_why_not(triton, triton_log):
    soft_limit = resource.getrlimit(resource.RLIMIT_NICE)[0]
    allowed = os.geteuid() == 0 or soft_limit == resource.RLIM_INFINITY or soft_limit >= 30
    if allowed:
        assert engine_ready(triton_log)["engine_nice"] == -10
        # Where the kernel schedules sessions as groups, Triton's session is raised too (else
        # the thread's nice would not count against Envoy, the frontend or the clients).
        grouped = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
        assert engine_ready(triton_log)["session_nice"] == (-10 if grouped else None)
    else:
        assert "could not set the engine thread's nice value" in triton_log.read_text()
