"""Which engine serves a model: `choose_engine` (what `auto` means) and `create_engine`.

The interface both implement, and what they share, is textgen/core/engine.py.
"""

from __future__ import annotations

import logging

from textgen.core.config import EngineConfig
from textgen.core.engine import GenerationEngine
from textgen.core.loading import ModelLoadError, resolve_device
from textgen.core.outputs import EngineObserver

log = logging.getLogger("textgen")


def choose_engine(config: EngineConfig) -> str:
    """`auto`: vLLM on CUDA where it runs the model; on CPUs this package's engine, which
    streams faster through this stack at the concurrency a CPU serves (docs/performance.md,
    The two engines)."""
    if config.engine != "auto":
        return config.engine
    if resolve_device(config.device).type != "cuda":
        return "transformers"
    from textgen.vllm_engine.engine import vllm_supports

    reason = vllm_supports(config.model_dir)
    if reason:
        log.info("engine auto: using transformers: %s", reason)
        return "transformers"
    return "vllm"


def create_engine(config: EngineConfig, observer: EngineObserver) -> GenerationEngine:
    """The engine `config.engine` names (or `auto` picks), loaded and running."""
    if choose_engine(config) == "vllm":
        from textgen.vllm_engine.engine import VllmEngine, vllm_supports

        # `auto` only chose vLLM where it runs the model; a named `vllm` is checked here.
        reason = vllm_supports(config.model_dir) if config.engine == "vllm" else None
        if reason:
            raise ModelLoadError(f"engine `vllm` cannot serve {config.model_dir}: {reason}; "
                                 f"or use engine `transformers`")
        return VllmEngine(config, observer)
    from textgen.transformers_engine.engine import TransformersEngine
    return TransformersEngine(config, observer)
