"""Load a Hugging Face causal-LM directory onto the right device, or fail with a clear reason.

Why its own module: a wrong path or a broken directory is the most common deployment mistake,
and the model load must say which path and what was wrong instead of a deep stack trace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import warnings
from pathlib import Path
from typing import Any

import torch

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


class ModelLoadError(RuntimeError):
    """The model directory cannot be served; the message names the path and the fix."""


def return_large_frees_to_the_os() -> None:
    """Makes glibc give every freed block of 1 MiB or more back to the system at once.

    Why: an engine allocates and frees large blocks every few steps (logits, prefill keys and
    values, re-laid-out caches). After the first large free glibc raises its mmap threshold
    (up to 32 MiB) and serves later blocks from its heap, which it keeps: the `llm` process
    grew over bursts of streams on SmolLM2 (docs/performance.md, Reliability). A fixed
    threshold keeps them mapped and returned (an mmap a step of a few MiB: noise beside a
    step's work). No-op where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        pass


def resolve_device(requested: str) -> torch.device:
    """`auto` takes the first CUDA device when there is one, else the CPU."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device `cuda` was requested but no CUDA device is visible; "
                             "use device `auto` or `cpu`")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device("cuda:0" if requested == "cuda" else "cpu")


def _check_model_dir(model_dir: Path) -> None:
    """That `model_dir` is a save_pretrained directory at all (every engine starts here, so
    each reports a wrong path the same way)."""
    hint = "set parameter `model_dir` in config.pbtxt or export LLM_MODEL_DIR"
    if not model_dir.is_dir():
        raise ModelLoadError(f"model directory {model_dir} does not exist; {hint}")
    if not (model_dir / "config.json").is_file():
        raise ModelLoadError(f"model directory {model_dir} has no config.json: it is not a "
                             f"directory written by save_pretrained; {hint}")


def load_config(model_dir: Path) -> Any:
    """The directory's model config (before the weights: `dtype` `auto` reads its widths)."""
    from transformers import AutoConfig

    return _load_part(AutoConfig, model_dir, "read the model config in")


def load_tokenizer(model_dir: Path) -> Any:
    """The directory's tokenizer, after checking that it is a save_pretrained directory."""
    from transformers import AutoTokenizer

    return _load_part(AutoTokenizer, model_dir, "load the tokenizer from")


def _load_part(auto_class: Any, model_dir: Path, doing: str) -> Any:
    """`auto_class.from_pretrained(model_dir)` after the directory check; any failure as a
    ModelLoadError saying what could not be done."""
    _check_model_dir(model_dir)
    try:
        return auto_class.from_pretrained(model_dir)
    except Exception as exc:  # transformers raises many types; all mean "unusable"
        raise ModelLoadError(f"cannot {doing} {model_dir}: {exc}") from exc


def load_model(model_dir: Path, device: torch.device, dtype: torch.dtype,
               quantization: str = "none") -> tuple[Any, Any]:
    """Return (model, tokenizer) in eval mode on `device`. `int8` on CUDA loads 8-bit weights;
    on the CPU the model loads in float32 and the executor quantizes it (select_executor: the
    C forward's int8 panels, or `quantize_linear_int8` on the HF module)."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(model_dir)
    extra = _int8_loading_options(device, dtype) if quantization == "int8" else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, **extra)
    except Exception as exc:
        raise ModelLoadError(f"cannot load a causal LM from {model_dir}: {exc}") from exc
    if extra:  # bitsandbytes placed the 8-bit model on the GPU already
        return model.eval(), tokenizer
    return model.to(device).eval(), tokenizer


def _int8_loading_options(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """CUDA: bitsandbytes LLM.int8() at load time. CPU: nothing here (select_executor)."""
    if device.type != "cuda":
        if dtype != torch.float32:
            raise ModelLoadError(f"quantization `int8` on the CPU quantizes float32 weights; "
                                 f"use dtype `auto` or `float32`, got {str(dtype)[6:]}")
        return {}
    try:
        import bitsandbytes  # noqa: F401  (optional: only this option needs it)
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise ModelLoadError("quantization `int8` on CUDA needs the bitsandbytes package "
                             "(pip install bitsandbytes); or use quantization `none`") from exc
    return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True),
            "device_map": {"": device.index or 0}}


def quantize_linear_int8(model: Any) -> Any:
    """CPU: int8 dynamic quantization of the nn.Linear layers (weights int8, activations
    quantized per step). An output layer tied to the input embeddings is left alone: quantizing
    it would add an int8 copy beside the shared float matrix instead of replacing it."""
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    head = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    layers = {name: default_dynamic_qconfig for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear) and not (tied and module is head)}
    with warnings.catch_warnings():  # torch.ao.quantization deprecation notices
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
        return quantize_dynamic(model, layers, dtype=torch.qint8)
