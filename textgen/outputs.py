"""What the engine hands back for a sequence, and the interface it hands it through."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol


class FinishReason(str, Enum):
    """Why a sequence ended. Clients see only `stop` and `length`; the others end in an error
    answer (`rejected`, `error`) or in nobody listening (`cancelled`). Write `.value` where
    it leaves the process (f-strings of str enums differ between Python 3.10 and 3.11)."""

    STOP = "stop"            # EOS or a stop string
    LENGTH = "length"        # max_tokens reached
    CANCELLED = "cancelled"  # the client went away
    REJECTED = "rejected"    # waited in the queue longer than queue_timeout_seconds
    ERROR = "error"          # generation failed or the server shut down under it

    @property
    def answered(self) -> bool:
        """The client got a completion (not an error, not a cancellation)."""
        return self in (FinishReason.STOP, FinishReason.LENGTH)


@dataclass(frozen=True)
class SequenceOutput:
    """The end of one sequence. `text` is the whole completion (never the prompt)."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    queue_seconds: float
    first_token_seconds: float  # from arrival; equals total when no token was produced
    total_seconds: float
    error: str = ""  # set when finish_reason is REJECTED or ERROR


class OutputSink(Protocol):
    """Where one sequence's results go. Called from the engine thread only.

    `on_text` receives each piece of final text as it is produced; exactly one `on_finish`
    follows, on success, cancellation and error alike.
    """

    def on_text(self, delta: str) -> None: ...

    def on_finish(self, output: SequenceOutput) -> None: ...

    def is_cancelled(self) -> bool: ...


class EngineObserver:
    """Hooks for metrics, called from the engine thread; the default records nothing."""

    def on_queue(self, running: int, waiting: int) -> None:
        """After each scheduling decision: sequences running and waiting."""

    def on_first_token(self, seconds: float) -> None:
        """A sequence produced its first token `seconds` after it arrived."""

    def on_finish(self, output: SequenceOutput) -> None:
        """A sequence ended, for any reason."""

    def on_reject(self, reason: str) -> None:
        """A request was refused: `queue_full` or `queue_timeout`."""
