"""Load a Hugging Face causal-LM directory onto the right device, or fail with a clear reason.

Why its own module: a wrong path or a broken directory is the most common deployment mistake,
and the model load must say which path and what was wrong instead of a deep stack trace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(RuntimeError):
    """The model directory cannot be served; the message names the path and the fix."""


def resolve_device(requested: str) -> torch.device:
    """`auto` takes the first CUDA device when there is one, else the CPU."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device `cuda` was requested but no CUDA device is visible; "
                             "use device `auto` or `cpu`")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device("cuda:0" if requested == "cuda" else "cpu")


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on GPUs that support it, fp16 on older GPUs, fp32 on the CPU."""
    if requested != "auto":
        return _DTYPES[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_model(model_dir: Path, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """Return (model, tokenizer) in eval mode on `device`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hint = "set parameter `model_dir` in config.pbtxt or export LLM_MODEL_DIR"
    if not model_dir.is_dir():
        raise ModelLoadError(f"model directory {model_dir} does not exist; {hint}")
    if not (model_dir / "config.json").is_file():
        raise ModelLoadError(f"model directory {model_dir} has no config.json: it is not a "
                             f"directory written by save_pretrained; {hint}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception as exc:  # transformers raises many types; all mean "unusable"
        raise ModelLoadError(f"cannot load the tokenizer from {model_dir}: {exc}") from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    except Exception as exc:
        raise ModelLoadError(f"cannot load a causal LM from {model_dir}: {exc}") from exc
    return model.to(device).eval(), tokenizer
