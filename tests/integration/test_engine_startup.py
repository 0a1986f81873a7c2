"""What the served engine says about itself at start-up: the executor it picked for the demo
model and the priority its thread runs at (the start-up log line is how operators see both)."""

from __future__ import annotations

import json
import os
import re
import resource
from pathlib import Path

import pytest

from textgen.engine_thread import session_nice


def engine_ready(triton_log: Path) -> dict:
    line = next(l for l in triton_log.read_text().splitlines() if "llm: engine ready" in l)
    return json.loads(re.search(r"engine ready (\{.*\})", line.encode().decode("unicode_escape"))
                      .group(1))


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process we can read."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
        found[int(entry.name)] = (int(stat[1]), command)
    return found


def test_demo_model_is_served_by_the_lean_llama_executor(triton, triton_log):
    assert engine_ready(triton_log)["executor"] == "llama"


def _may_raise_priority() -> bool:
    """Whether processes started by this user may lower their nice value to -10."""
    soft_limit = resource.getrlimit(resource.RLIMIT_NICE)[0]
    return os.geteuid() == 0 or soft_limit == resource.RLIM_INFINITY or soft_limit >= 30


def _sessions_are_grouped() -> bool:
    return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"


def test_engine_thread_runs_above_the_token_path_or_says_why_not(triton, triton_log):
    if _may_raise_priority():
        assert engine_ready(triton_log)["engine_nice"] == -10
        # Where the kernel schedules sessions as groups, the engine's session is raised too
        # (else the thread's nice would not count against Envoy, the frontend or the clients).
        expected = -10 if _sessions_are_grouped() else None
        assert engine_ready(triton_log)["session_nice"] == expected
    else:
        assert "could not set the engine thread's nice value" in triton_log.read_text()


def test_only_the_engine_process_is_raised_not_tritons_own_threads(triton, triton_log):
    """The engine's process leads a session of its own; Triton's (HTTP and gRPC threads, the
    stream model) keeps the priority Envoy, the frontend and the clients have."""
    if not _sessions_are_grouped():
        pytest.skip("the kernel does not schedule sessions as groups: nothing to separate")
    processes = _processes()
    server = next(pid for pid, (_, command) in processes.items()
                  if "tritonserver" in command and f"--http-port={triton.http_port} " in command)
    engine = next(pid for pid, (parent, command) in processes.items()
                  if parent == server and "/llm/1/model.py" in command)
    assert os.getsid(engine) != os.getsid(server)
    assert session_nice(server) == 0
    if _may_raise_priority():
        assert engine_ready(triton_log)["session_nice"] == session_nice(engine) == -10
