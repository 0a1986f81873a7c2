"""What the engine hands back for a sequence, and the interface it hands it through."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Optional, Protocol, Sequence

from contracts.logprobs import TokenLogprobs

log = logging.getLogger("textgen")


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
    # Only for a request that asked (None otherwise): each generated token's, and each prompt
    # position's (the first is None: nothing predicts it).
    logprobs: Optional[tuple[TokenLogprobs, ...]] = None
    prompt_logprobs: Optional[tuple[Optional[TokenLogprobs], ...]] = None
    index: int = 0  # which of the request's n sequences this is
    adapter: str = ""  # the LoRA adapter it ran ("": the base model), for the metrics


@dataclass
class Timeline:
    """When one sequence arrived, got a slot and produced its first token (monotonic s)."""

    arrival: float = field(default_factory=time.monotonic)
    admitted_at: Optional[float] = None
    first_token_at: Optional[float] = None

    def output(self, text: str, reason: FinishReason, prompt_tokens: int,
               completion_tokens: int, error: str = "",
               logprobs: Optional[Sequence[TokenLogprobs]] = None,
               prompt_logprobs: Optional[Sequence[Optional[TokenLogprobs]]] = None,
               index: int = 0, adapter: str = "") -> SequenceOutput:
        """The sequence's end as the sinks and metrics see it, timed from now."""
        now = time.monotonic()
        return SequenceOutput(
            text=text, finish_reason=reason, prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            queue_seconds=(self.admitted_at or now) - self.arrival,
            first_token_seconds=(self.first_token_at or now) - self.arrival,
            total_seconds=now - self.arrival, error=error,
            logprobs=None if logprobs is None else tuple(logprobs),
            prompt_logprobs=None if prompt_logprobs is None else tuple(prompt_logprobs),
            index=index, adapter=adapter)


class Pacer:
    """How often a stream hands text on: the first piece at once, then at most once per
    `interval_s` (what came in between goes out together), and all of it at the end. The
    logprobs of the tokens behind the text travel with it.

    Why: every hand-over costs a link message, a Triton response, an SSE event and a client
    wake-up, on the cores the model needs; vLLM's stream interval makes the same trade. A piece
    is held at most the interval or one step, whichever is longer, and never delays the first
    token."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._unsent = ""
        self._unsent_logprobs: list[TokenLogprobs] = []
        self._sent_at = float("-inf")

    def take(self, delta: str, now: float, final: bool = False,
             logprobs: Sequence[TokenLogprobs] = ()) -> tuple[str, list[TokenLogprobs]]:
        """Add `delta` (and its tokens' logprobs); returns what to hand on now (nothing
        held back: hold it)."""
        self._unsent += delta
        self._unsent_logprobs.extend(logprobs)
        if not (self._unsent or self._unsent_logprobs) or not (
                final or now - self._sent_at >= self._interval_s):
            return "", []
        taken = self._unsent, self._unsent_logprobs
        self._unsent, self._unsent_logprobs, self._sent_at = "", [], now
        return taken


class OutputSink(Protocol):
    """Where one sequence's results go. Called from the engine thread only.

    `on_text` receives each piece of final text as it is produced, with the logprobs of the
    tokens behind it when the request asked for them (a piece may hold logprobs and no text:
    an incomplete character, text held back for a stop string, the end-of-sequence token);
    exactly one `on_finish` follows, on success, cancellation and error alike. A request with
    `n` sequences has one sink for all of them: each piece names its sequence (`index`), and
    each sequence ends with its own `on_finish` (`output.index`), n in all.
    """

    def on_text(self, delta: str, logprobs: Sequence[TokenLogprobs] = (),
                index: int = 0) -> None: ...

    def on_finish(self, output: SequenceOutput) -> None: ...

    def is_cancelled(self) -> bool: ...


class Collector:
    """An OutputSink for a caller that only wants whole sequences (`python -m textgen`, the
    benchmarks): it drops the pieces and keeps each SequenceOutput, whose text is whole."""

    def __init__(self, sequences: int = 1) -> None:
        self.outputs: list[SequenceOutput] = []
        self._left = sequences
        self._done = threading.Event()

    def on_text(self, delta: str, logprobs: Sequence[TokenLogprobs] = (),
                index: int = 0) -> None:
        pass

    def on_finish(self, output: SequenceOutput) -> None:
        self.outputs.append(output)
        self._left -= 1
        if self._left == 0:
            self._done.set()

    def is_cancelled(self) -> bool:
        return False

    def wait(self) -> list[SequenceOutput]:
        """Every sequence's output, in the order they finished."""
        self._done.wait()
        return self.outputs


class EngineObserver:
    """Hooks for metrics, called from the engine thread; the default records nothing."""

    def on_queue(self, running: int, waiting: int) -> None:
        """After each scheduling decision: sequences running and waiting."""

    def on_cache_usage(self, fraction: float) -> None:
        """The share of the engine's KV cache the running sequences hold (0-1)."""

    def on_first_token(self, seconds: float) -> None:
        """A sequence produced its first token `seconds` after it arrived."""

    def on_finish(self, output: SequenceOutput) -> None:
        """A sequence ended, for any reason."""

    def on_reject(self, reason: str) -> None:
        """A request was refused: `queue_full` or `queue_timeout`."""

    def on_adapters(self, served: int, resident: int) -> None:
        """LoRA adapters served, and those in memory, after a load, unload or eviction."""


def send_text(sink: OutputSink, pacer: Pacer, delta: str, now: float,
              final: bool = False, logprobs: Sequence[TokenLogprobs] = (),
              index: int = 0) -> bool:
    """Hand `delta` to the sink when its pacer says so; False when the sink failed (the
    client is gone), which the engine treats as a cancellation."""
    text, taken = pacer.take(delta, now, final, logprobs)
    if not (text or taken):
        return True
    try:
        sink.on_text(text, taken, index)
    except Exception:
        log.warning("sending a token failed; cancelling the sequence", exc_info=True)
        return False
    return True


def send_finish(sink: OutputSink, output: SequenceOutput, observer: EngineObserver) -> None:
    """Count the sequence's end, then hand it to its sink (exactly once per sequence)."""
    observer.on_finish(output)
    try:
        sink.on_finish(output)
    except Exception:
        log.warning("delivering the final response failed", exc_info=True)
