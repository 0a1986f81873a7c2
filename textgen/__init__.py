"""Text generation for the `llm` Triton model, importable and testable without Triton.

  core/                 what every engine shares: config, validation, outputs, admission,
                        the engine interface and base, CPU threads, KV budget, model loading
  transformers_engine/  this project's engine: the loop, scheduler, sampling, detokenizing
  executors/            one forward per step: the HF module, the lean Llama forward, its KV
                        batch, and the native (C) kernel
  vllm_engine/          vLLM's engine core driven in-process
  engines.py            which engine serves a model

The names below are the facade the Triton models and tools use. They load on first use, so
importing one light piece (validation, say, in `llm_stream`'s process) never pulls in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_FACADE = {
    "EngineConfig": "textgen.core.config",
    "ConfigError": "textgen.core.config",
    "Limits": "textgen.core.config",
    "load_engine_config": "textgen.core.config",
    "GenerationRequest": "textgen.core.validation",
    "ValidationError": "textgen.core.validation",
    "parse_request": "textgen.core.validation",
    "FinishReason": "textgen.core.outputs",
    "SequenceOutput": "textgen.core.outputs",
    "OutputSink": "textgen.core.outputs",
    "EngineObserver": "textgen.core.outputs",
    "Overloaded": "textgen.core.admission",
    "ModelLoadError": "textgen.core.loading",
    "GenerationEngine": "textgen.core.engine",
    "create_engine": "textgen.engines",
}
__all__ = sorted(_FACADE)


def __getattr__(name: str) -> Any:
    if name not in _FACADE:
        raise AttributeError(f"module 'textgen' has no attribute {name!r}")
    return getattr(importlib.import_module(_FACADE[name]), name)
