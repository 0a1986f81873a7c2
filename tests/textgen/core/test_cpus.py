"""The engine's default thread count: the cores the process may use (affinity mask, cgroup
quota), shared among the engines on the host, less a share for the stack around it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from textgen.core.cpus import (ENGINES_ON_HOST, cgroup_quota, default_threads, engine_threads,
                               run_in_passing_thread)


@pytest.mark.parametrize("cpus, engines, threads", [
    (1, 1, 1), (2, 1, 1), (4, 1, 3), (16, 1, 14), (64, 1, 56),
    (16, 2, 7), (2, 2, 1), (3, 4, 1),
])
def test_the_default_keeps_a_share_for_the_stack_and_splits_the_host_among_engines(
        cpus, engines, threads):
    chosen = default_threads({ENGINES_ON_HOST: str(engines)}, usable=(cpus, "test"))
    assert chosen.count == threads
    assert chosen.why.startswith("auto: test")


def test_a_configured_thread_count_wins_over_the_rule():
    assert engine_threads(6, {}).count == 6
    assert engine_threads(None, {}).why.startswith("auto: ")


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_cgroup_v2_quota_is_read_as_the_tightest_on_the_way_to_the_root(tmp_path):
    write(tmp_path / "cpu.max", "max 100000\n")
    write(tmp_path / "kubepods" / "cpu.max", "800000 100000\n")  # the node's share: 8 CPUs
    write(tmp_path / "kubepods" / "pod1" / "cpu.max", "250000 100000\n")  # limits.cpu: 2.5
    assert cgroup_quota(tmp_path, "0::/kubepods/pod1\n") == 2.5
    write(tmp_path / "kubepods" / "pod1" / "cpu.max", "max 100000\n")
    assert cgroup_quota(tmp_path, "0::/kubepods/pod1\n") == 8


def test_a_cgroup_v1_quota_is_read_and_no_quota_means_none(tmp_path):
    write(tmp_path / "cpu" / "docker" / "c1" / "cpu.cfs_quota_us", "150000\n")
    write(tmp_path / "cpu" / "docker" / "c1" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_quota(tmp_path, "4:cpu,cpuacct:/docker/c1\n") == 1.5
    write(tmp_path / "cpu" / "docker" / "c1" / "cpu.cfs_quota_us", "-1\n")
    assert cgroup_quota(tmp_path, "4:cpu,cpuacct:/docker/c1\n") is None
    assert cgroup_quota(tmp_path, "0::/\n") is None


def test_work_in_a_passing_thread_runs_elsewhere_and_hands_back_its_result_or_error() -> None:
    ran_on: list[threading.Thread] = []

    def work() -> int:
        ran_on.append(threading.current_thread())
        return 42

    assert run_in_passing_thread(work) == 42
    assert ran_on[0] is not threading.current_thread() and not ran_on[0].is_alive()

    def fails() -> None:
        raise ValueError("the model directory holds no config.json")

    with pytest.raises(ValueError, match="no config.json"):
        run_in_passing_thread(fails)

