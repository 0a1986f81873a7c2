"""What the served engine says about itself at start-up: the executor it picked for the demo
model, how its decode step runs, and the priority its thread runs at (the start-up log line is how operators see both)."""

from __future__ import annotations

import json
import os
import re
import resource
from pathlib import Path

import openai

from tools import serve


def engine_ready(triton_log: Path) -> dict:
    line = next(l for l in triton_log.read_text().splitlines() if "llm: engine ready" in l)
    return json.loads(re.search(r"engine ready (\{.*\})", line.encode().decode("unicode_escape"))
                      .group(1))


def test_demo_model_is_served_by_the_lean_llama_executor_with_its_c_forward(triton,
                                                                                triton_log):
    ready = engine_ready(triton_log)
    assert (ready["executor"], ready["forward_path"]) == ("llama", "c")


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


def test_the_load_log_says_the_threads_the_token_budget_and_the_caches_bound(triton,
                                                                             triton_log):
    """textgen's load-time facts reach Triton's log, and the ready line carries them: the
    dtype and why; on the demo model (context 512) the auto budget is max_num_seqs full
    contexts, of float32 keys and values (the C forward's cache in every dtype)."""
    text = triton_log.read_text()
    ready = engine_ready(triton_log)
    threads = re.search(r"textgen: (\d+) CPU threads \((.*?)\)", text)
    assert threads and int(threads.group(1)) == ready["cpu_threads"]
    assert threads.group(2).startswith(("auto: ", "cpu_threads"))
    assert ready["max_batch_total_tokens"] == 32 * 512
    budget = re.search(r"textgen: token budget (\d+) \(auto: 32 full contexts of 512\); KV "
                       r"cache \(float32\) at most (\d+) tokens, (\d+) MiB", text)
    assert budget and int(budget.group(1)) == 32 * 512
    assert int(budget.group(3)) == ready["kv_cache_max_mib"]
    dtype = re.search(r'textgen: dtype (\w+) \((.*)\)"?$', text, re.MULTILINE)
    assert dtype and dtype.groups() == (ready["dtype"], ready["dtype_reason"])
    assert f"textgen: forward kernel for {ready['dtype']} weights compiled in" in text


def test_what_the_engine_chose_reaches_the_banner_and_v1_models(triton, triton_log, gateway,
                                                                api_key):
    """The `engine ready` facts are published as `llm:engine_info` on Triton's metrics port,
    where the runner's banner and the OpenAI frontend's model card read them (the session's
    Triton runs float32 as configured; tests/textgen/core/test_dtypes.py covers `auto`)."""
    ready = engine_ready(triton_log)
    assert (ready["dtype"], ready["dtype_reason"]) == ("float32", "as configured")
    assert serve.engine_line(triton) == (
        f"transformers, float32 (as configured), executor llama, forward {ready['forward_path']}")
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key, max_retries=0)
    card = client.models.list().data[0]
    assert card.model_extra["engine"] == {
        "engine": "transformers", "dtype": "float32", "dtype_reason": "as configured",
        "executor": "llama", "forward_path": ready["forward_path"]}
    assert client.models.retrieve(card.id).model_extra["engine"] == card.model_extra["engine"]
