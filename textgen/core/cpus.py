"""How many threads the engine computes with on a CPU, by default: the cores it may really use.

Why: a fixed default fits one machine. `os.cpu_count()` counts the host's cores, not the ones
this process may run on: a container with a CPU limit (Kubernetes' `resources.limits.cpu`,
i.e. the cgroup's `cpu.max` quota) or a `taskset` affinity mask gets fewer, and threads past
them only queue behind each other. The rule, written once here:

    usable      = min(CPUs in the affinity mask, ceil(cgroup quota / period))
    per engine  = usable / LLM_ENGINES_ON_HOST   (the runner's replicas share the host; 1 alone)
    threads     = per engine - max(1, per engine // 8), at least 1

The share kept back (one core in eight, at least one) serves the rest of the stack on the same
cores: Triton's HTTP/gRPC front ends, the stream model, the OpenAI frontend and Envoy, which
all wake per streamed token. On 2 cores that leaves 1 thread, on 16 cores 14. Setting
`cpu_threads` (LLM_CPU_THREADS) overrides the rule.

Where the threads' work starts matters too: `run_in_passing_thread` says why the model is
loaded on a thread of its own.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Optional, TypeVar

T = TypeVar("T")

# The runner (tools/serve.py) tells each model process how many engines share the host.
ENGINES_ON_HOST = "LLM_ENGINES_ON_HOST"
CGROUP_ROOT = Path("/sys/fs/cgroup")


class Threads(NamedTuple):
    count: int
    why: str  # for the load log: how the count was reached


def cgroup_quota(root: Path = CGROUP_ROOT,
                 membership: Optional[str] = None) -> Optional[float]:
    """CPUs the cgroup quota allows this process (cgroup v2 `cpu.max` or v1 `cfs_quota_us`,
    the tightest on the way to the root), or None when unlimited or unknown. `membership`:
    the text of /proc/self/cgroup (read when None)."""
    limits = []
    if membership is None:
        try:
            membership = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    for line in membership.splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: /sys/fs/cgroup/<path>/cpu.max = "quota period" | "max ..."
            folder = root / path.lstrip("/")
            while True:
                try:
                    quota, period = (folder / "cpu.max").read_text().split()
                    if quota != "max":
                        limits.append(int(quota) / int(period))
                except (OSError, ValueError):
                    pass
                if folder == root or root not in folder.parents:
                    break
                folder = folder.parent
        elif "cpu" in controllers.split(","):  # v1
            folder = root / "cpu" / path.lstrip("/")
            try:
                quota = int((folder / "cpu.cfs_quota_us").read_text())
                period = int((folder / "cpu.cfs_period_us").read_text())
                if quota > 0 and period > 0:
                    limits.append(quota / period)
            except (OSError, ValueError):
                pass
    return min(limits) if limits else None


def usable_cpus() -> tuple[int, str]:
    """The CPUs this process may run on, and what bounded them."""
    mask = len(os.sched_getaffinity(0))
    quota = cgroup_quota()
    if quota is not None and math.ceil(quota) < mask:
        return max(1, math.ceil(quota)), f"cgroup CPU quota {quota:g} (affinity {mask})"
    return mask, f"{mask} CPUs in the affinity mask"


def default_threads(env: Mapping[str, str] = os.environ,
                    usable: Optional[tuple[int, str]] = None) -> Threads:
    """The rule in the module docstring."""
    cpus, bound = usable or usable_cpus()
    try:
        engines = max(1, int(env.get(ENGINES_ON_HOST, "1")))
    except ValueError:
        engines = 1
    share = max(1, cpus // engines)
    count = max(1, share - max(1, share // 8))
    shared = f", {engines} engines on this host" if engines > 1 else ""
    return Threads(count, f"auto: {bound}{shared}, {count} for the engine, the rest for the "
                          f"stack around it")


def engine_threads(configured: Optional[int], env: Mapping[str, str] = os.environ) -> Threads:
    """`cpu_threads` as configured, or the default rule when it is `auto` (None)."""
    if configured is not None:
        return Threads(configured, "cpu_threads (LLM_CPU_THREADS)")
    return default_threads(env)


def run_in_passing_thread(work: Callable[[], T]) -> T:
    """Run `work` on a thread that ends with it; return its result or raise its error.

    Why: the OpenMP runtime (libgomp, which torch and the C forward share) keeps a pool of
    threads for every thread that ran a parallel region, until that thread ends, and counts
    them all. Once they outnumber the CPUs, its barriers stop spinning and sleep ("throttled
    spin"), and the C forward meets several barriers a layer and step. Loading the model on
    the thread that stays (Triton's) left its pool behind beside the engine thread's: on the
    real model at 2 threads a one-row decode step took 23.4 ms instead of 18.2 (on 16 cores,
    14 + 14 pool threads). Loading on a passing thread leaves only the engine thread's pool.
    """
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the caller, which raises it
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="textgen-load")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]
