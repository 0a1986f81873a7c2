"""The thread an engine steps its model on, started at a raised priority.

Why raised: every token wakes Triton, the stream model, Envoy and the client; at the same
priority they preempt the step that makes the next token (measured at 32 streams on 2 cores:
the engine thread waited for a core 42% of the time and a step took 3x its unloaded time).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable

log = logging.getLogger("textgen")


def start_engine_thread(run: Callable[[], None], name: str, nice: int) -> threading.Thread:
    """Start `run` on a daemon thread with nice value `nice` (EngineConfig.engine_nice)."""
    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    assert thread.native_id is not None  # set by start() on Linux
    try:
        os.setpriority(os.PRIO_PROCESS, thread.native_id, nice)
    except OSError as exc:
        log.warning("could not set the engine thread's nice value to %d (%s); steps may be "
                    "preempted by the token path under load: raise the nice limit "
                    "(`ulimit -e 30`, compose `ulimits: {nice: 30}`) or grant CAP_SYS_NICE, "
                    "or set engine_nice to 0", nice, exc.strerror)
    return thread


def thread_nice(thread: threading.Thread) -> int:
    """The nice value `thread` runs at, for the start-up log line."""
    assert thread.native_id is not None
    return os.getpriority(os.PRIO_PROCESS, thread.native_id)
