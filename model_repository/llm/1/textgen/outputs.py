"""What the engine hands back for a sequence, and the interface it hands it through."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class SequenceOutput:
    """The end of one sequence. `text` is the whole completion (never the prompt)."""

    text: str
    finish_reason: str  # "stop" (EOS or stop string), "length", "cancelled", "error"
    prompt_tokens: int
    completion_tokens: int
    queue_seconds: float
    first_token_seconds: float  # from arrival; equals total when no token was produced
    total_seconds: float
    error: str = ""  # set when finish_reason is "error"


class OutputSink(Protocol):
    """Where one sequence's results go. Called from the engine thread only.

    `on_text` receives each piece of final text as it is produced; exactly one `on_finish`
    follows, on success, cancellation and error alike.
    """

    def on_text(self, delta: str) -> None: ...

    def on_finish(self, output: SequenceOutput) -> None: ...

    def is_cancelled(self) -> bool: ...
