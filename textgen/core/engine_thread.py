"""The thread an engine steps its model on, started at a raised priority.

Why raised: every token wakes Triton, the stream model, Envoy and the client; at the same
priority they preempt the step that makes the next token (measured: docs/performance.md, How
the engine got here).

A thread's nice value only ranks it against its own scheduling group, though. Where the
kernel groups processes by session (`sched_autogroup_enabled`, the default of Debian's and
Ubuntu's kernels), Triton, Envoy, the OpenAI frontend and every client each run in a session
of their own, and each session gets an equal share of the CPU whatever its threads' nice
values. So a raised engine priority is also given to the session Triton runs in (Triton and
its model processes): the engine thread then waited for a core far less often, and output
tokens/s through the gateway rose (docs/performance.md, Before the C step, and the changes that
led to it). (Containers are scheduled by their cgroups instead, and this changes nothing there.)
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable, Optional

log = logging.getLogger("textgen")

AUTOGROUP_ENABLED = Path("/proc/sys/kernel/sched_autogroup_enabled")


def _autogroup(pid: Optional[int]) -> Path:
    """The session group file of process `pid` (this one by default):
    "/autogroup-<n> nice <value>"."""
    return Path(f"/proc/{pid or 'self'}/autogroup")


def start_engine_thread(run: Callable[[], None], name: str, nice: int) -> threading.Thread:
    """Start `run` on a daemon thread with nice value `nice` (EngineConfig.engine_nice); a
    raised priority (nice < 0) is given to this process's session too, where the kernel
    schedules sessions as groups."""
    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    assert thread.native_id is not None  # set by start() on Linux
    try:
        os.setpriority(os.PRIO_PROCESS, thread.native_id, nice)
        if nice < 0:
            raise_session_priority(nice)
    except OSError as exc:
        log.warning("could not set the engine thread's nice value to %d (%s); steps may be "
                    "preempted by the token path under load: raise the nice limit "
                    "(`ulimit -e 30`, compose `ulimits: {nice: 30}`) or grant CAP_SYS_NICE, "
                    "or set engine_nice to 0", nice, exc.strerror)
    return thread


def session_nice(pid: Optional[int] = None) -> Optional[int]:
    """The nice value of the session group of process `pid` (this one by default); None
    where the kernel does not group by session."""
    try:
        if AUTOGROUP_ENABLED.read_text().strip() != "1":
            return None
        return int(_autogroup(pid).read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def raise_session_priority(nice: int, pid: Optional[int] = None) -> None:
    """Give the session group of `pid` (this process by default) nice value `nice`, unless
    it already runs at that priority or higher. Raises OSError without the privilege."""
    current = session_nice(pid)
    if current is not None and current > nice:
        _autogroup(pid).write_text(str(nice))


def thread_nice(thread: threading.Thread) -> int:
    """The nice value `thread` runs at, for the start-up log line."""
    assert thread.native_id is not None
    return os.getpriority(os.PRIO_PROCESS, thread.native_id)
