"""The engine interface the Triton models talk to, and the choice between its implementations.

Why an interface: everything in front of it (the Triton models, the streaming link, validation,
the request log, metrics) is the same whichever library runs the model, so an engine implements
only what differs. Two exist:

- `transformers` (transformers_engine.py): this package's own scheduler over Hugging Face
  modules, or the lean Llama-family forward; no dependency beyond the project's lock.
- `vllm` (vllm_engine.py): vLLM's engine core (its scheduler, paged KV cache, compiled model
  runner, CUDA graphs on GPUs), driven in this process; needs the separately pinned vLLM
  environment (`make vllm`, requirements-vllm.lock).

Both take requests that `validation.parse_request` already checked against the engine's own
`limits`, refuse what they cannot take with `admission.Overloaded` or `ValidationError` before
queuing it, and report every sequence through its `OutputSink` exactly as `outputs.py` says.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from .config import EngineConfig, Limits
from .loading import ModelLoadError, resolve_device
from .outputs import EngineObserver, OutputSink
from .validation import GenerationRequest

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


def choose_engine(config: EngineConfig) -> str:
    """`auto`: vLLM on CUDA where it runs the model; on CPUs this package's engine, which
    streams faster through this stack at the concurrency a CPU serves (README, Engines)."""
    if config.engine != "auto":
        return config.engine
    if resolve_device(config.device).type != "cuda":
        return "transformers"
    from .vllm_engine import vllm_supports

    reason = vllm_supports(config.model_dir)
    if reason:
        log.info("engine auto: using transformers: %s", reason)
        return "transformers"
    return "vllm"


def create_engine(config: EngineConfig, observer: EngineObserver) -> GenerationEngine:
    """The engine `config.engine` names (or `auto` picks), loaded and running."""
    if choose_engine(config) == "vllm":
        from .vllm_engine import VllmEngine, vllm_supports

        # `auto` only chose vLLM where it runs the model; a named `vllm` is checked here.
        reason = vllm_supports(config.model_dir) if config.engine == "vllm" else None
        if reason:
            raise ModelLoadError(f"engine `vllm` cannot serve {config.model_dir}: {reason}; "
                                 f"or use engine `transformers`")
        return VllmEngine(config, observer)
    from .transformers_engine import TransformersEngine
    return TransformersEngine(config, observer)
