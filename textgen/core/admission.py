"""Who gets in: the queue bound and the drain, the same for every engine.

Why apart from the engines: a client sees the same 503 (error type `overloaded`, the gateway
adds Retry-After) with the same message whichever engine runs the model, and the metrics count
the same rejection reasons. An engine only says how many sequences are waiting for a slot.
"""

from __future__ import annotations

import time

from textgen.core.outputs import EngineObserver


class Overloaded(RuntimeError):
    """No capacity for the request now (queue full, shutting down): refused at once; the
    caller answers with error type `overloaded` (HTTP 503, retry later)."""


class Admission:
    """Not thread-safe on its own: engines call it under the lock that guards their queue."""

    def __init__(self, max_queue_size: int, queue_timeout_s: float,
                 observer: EngineObserver) -> None:
        self.max_queue_size = max_queue_size
        self.queue_timeout_s = queue_timeout_s
        self._observer = observer
        self.draining = False  # no new sequences; the admitted ones still run

    def admit(self, waiting: int) -> None:
        """Raise Overloaded unless one more sequence may wait behind `waiting` others."""
        if self.draining:
            raise Overloaded("the server is shutting down; retry later")
        if waiting >= self.max_queue_size:
            self._observer.on_reject("queue_full")
            raise Overloaded(f"the server is at capacity ({self.max_queue_size} requests "
                             f"waiting); retry later")

    def expiry_cutoff(self) -> float:
        """Sequences still waiting that arrived before this (time.monotonic) have waited
        longer than queue_timeout_seconds."""
        return time.monotonic() - self.queue_timeout_s

    def expired(self) -> str:
        """Count a sequence that waited past queue_timeout_seconds; returns its error."""
        self._observer.on_reject("queue_timeout")
        return f"waited more than {self.queue_timeout_s:g} s for a slot; retry later"
