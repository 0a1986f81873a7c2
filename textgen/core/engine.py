"""The engine interface the Triton models talk to, and what its two implementations share.

Why an interface: everything in front of it (the Triton models, the streaming link,
validation, the request log, metrics) is the same whichever library runs the model, so an
engine implements only what differs. Two exist (textgen/engines.py chooses):

- `transformers` (textgen/transformers_engine): this package's own scheduler over Hugging Face
  modules, or the lean Llama-family forward; no dependency beyond the project's lock.
- `vllm` (textgen/vllm_engine): vLLM's engine core (its scheduler, paged KV cache, compiled
  model runner, CUDA graphs on GPUs), driven in this process; needs the separately pinned vLLM
  environment (`make vllm`, requirements-vllm.lock).

Both take requests that `validation.parse_request` already checked against the engine's own
`limits`, refuse what they cannot take with `admission.Overloaded` or `ValidationError` before
queuing it, and report every sequence through its `OutputSink` exactly as `outputs.py` says.
`EngineBase` holds what they share: the engine thread and its lock, admission, draining
shutdown, the start-up facts, the CPU threads and the limits narrowed to the model.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from textgen.core.admission import Admission
from textgen.core.config import EngineConfig, Limits
from textgen.core.cpus import engine_threads
from textgen.core.dtypes import resolve_dtype
from textgen.core.engine_thread import session_nice, start_engine_thread, thread_nice
from textgen.core.loading import resolve_device
from textgen.core.outputs import EngineObserver, OutputSink
from textgen.core.validation import GenerationRequest

if TYPE_CHECKING:
    from textgen.adapters.registry import AdapterRegistry

log = logging.getLogger("textgen")


class GenerationEngine(Protocol):
    limits: Limits  # the configured limits narrowed to the loaded model (context, vocabulary)

    def submit(self, request: GenerationRequest, sink: OutputSink) -> None:
        """Queue one request; raises ValidationError or Overloaded before queuing anything."""
        ...

    def describe(self) -> dict[str, Any]:
        """Facts for the start-up log line; `engine` names the implementation."""
        ...

    def shutdown(self, drain_timeout: float = 30.0) -> None:
        """Refuse new work, let admitted sequences finish (up to `drain_timeout`), stop."""
        ...


class EngineBase(abc.ABC):
    """The parts of an engine that do not depend on the library running the model.

    State shared with submitting threads is guarded by `_wakeup`; the engine thread
    (`_run`, started by `_start_thread` once the subclass is ready) owns the rest."""

    name: str          # what `describe()` and LLM_ENGINE call it
    limits: Limits
    adapters: Optional[AdapterRegistry] = None  # the LoRA adapters served; None: LoRA is off

    def __init__(self, config: EngineConfig, observer: Optional[EngineObserver]) -> None:
        self.config = config
        self.observer = observer or EngineObserver()
        self.device = resolve_device(config.device)
        # `auto` on a CPU: an engine that times its own forward decides again at load.
        self.dtype, self.dtype_why = resolve_dtype(config.dtype, self.device,
                                                   quantization=config.quantization)
        self._stream_interval_s = config.stream_interval_ms / 1000
        self._wakeup = threading.Condition()
        self._admission = Admission(config.max_queue_size, config.queue_timeout_s,
                                    self.observer)
        self._stopping = False  # the engine thread exits after its current step
        self._thread: Optional[threading.Thread] = None

    def _narrow_limits(self, context: int, vocabulary: int) -> Limits:
        """The configured limits within what the loaded model can take."""
        return self.config.limits.for_model(context, vocabulary)

    def _use_cpu_threads(self, set_threads: Callable[[int], None]) -> None:
        """Give the model's CPU work the engine's share of the cores (textgen/core/cpus.py)."""
        threads = engine_threads(self.config.cpu_threads)
        set_threads(threads.count)
        log.info("%d CPU threads (%s)", threads.count, threads.why)

    def _start_thread(self, thread_name: str) -> None:
        self._thread = start_engine_thread(self._run, thread_name, self.config.engine_nice)

    @abc.abstractmethod
    def _run(self) -> None:
        """The engine thread: step until `_stopping`, then end what is left with an error."""

    @abc.abstractmethod
    def _has_unfinished(self) -> bool:
        """Whether any sequence is queued or running (called with `_wakeup` held)."""

    def _close(self) -> None:
        """Release the library's own resources after the engine thread ended."""

    def shutdown(self, drain_timeout: float = 30.0) -> None:
        """Refuse new work, let admitted and queued sequences finish (up to `drain_timeout`),
        then stop; whatever is still unfinished then ends with an error."""
        deadline = time.monotonic() + drain_timeout
        with self._wakeup:
            self._admission.draining = True
            while self._has_unfinished() and time.monotonic() < deadline:
                self._wakeup.wait(0.05)
            self._stopping = True
            self._wakeup.notify()
        if self._thread is not None:
            self._thread.join(drain_timeout)
        self._close()

    def _facts(self) -> dict[str, Any]:
        """The implementation's own facts for `describe()`."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Facts for the start-up log line."""
        assert self._thread is not None
        return {"engine": self.name, "model_dir": str(self.config.model_dir),
                "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
                "dtype_reason": self.dtype_why,
                "context_length": self.limits.context_length, **self._facts(),
                **({} if self.adapters is None else {
                    "adapters": list(self.adapters.served()),
                    "max_loras": self.adapters.max_loras}),
                "engine_nice": thread_nice(self._thread), "session_nice": session_nice()}
