"""One LoRA adapter as PEFT's `save_pretrained` writes it, read and checked against the base.

A PEFT LoRA directory holds `adapter_config.json` (rank `r`, `lora_alpha`, `target_modules`,
...) and `adapter_model.safetensors`, whose tensors are named
`base_model.model.<module>.lora_A.weight` ([r, in]) and `...lora_B.weight` ([out, r]). A
targeted linear layer then computes `W x + (alpha / r) B A x` (`alpha / sqrt(r)` with
rsLoRA).

Why the checks: an adapter trained for another base model, or one using a PEFT option this
engine does not compute (DoRA, biases, extra trained modules), would otherwise load and answer
wrongly without a word. Every refusal is an `AdapterError` naming the adapter, what is wrong
and what would fix it.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch

from textgen.core.validation import UnknownAdapter

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TENSOR = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<half>[AB])(?:\.[^.]+)?"
                     r"\.weight$")
# PEFT options this engine computes only at their defaults: anything else changes the product.
_DEFAULTS: dict[str, Any] = {
    "use_dora": False, "fan_in_fan_out": False, "bias": "none", "lora_bias": False,
    "modules_to_save": None, "layer_replication": None, "rank_pattern": {}, "alpha_pattern": {},
    "use_qalora": False, "alora_invocation_tokens": None, "trainable_token_indices": None,
    "target_parameters": None,
}

__all__ = ["AdapterError", "LoraAdapter", "UnknownAdapter", "base_linears", "config_linears",
           "read_adapter"]

_SERIALS = itertools.count(1)  # next() on a count is atomic: reads happen on many threads


class AdapterError(ValueError):
    """An adapter that cannot be served; the message says what is wrong and how to fix it."""


@dataclass(eq=False)
class LoraAdapter:
    """One adapter's weights, in the base model's dtype and on its device.

    `weights`: per targeted module, (A [r, in], B [out, r]) with B already multiplied by the
    scaling, so a product is two matrix multiplications. `fused`: products of several modules
    at once (the Llama executor's q/k/v and gate/up), built on first use (`lora.StepLora`)."""

    name: str
    path: Path
    rank: int
    scaling: float
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]
    fused: dict[Any, Optional[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)  # `q_proj`, ...: for listings and logs
    users: int = 0  # running sequences (registry.AdapterRegistry counts them)
    # Unique to this read of the directory, from 1: an engine that loads the directory itself
    # (vLLM, as LoRARequest's id) tells these weights from an earlier read of the same name.
    serial: int = field(default_factory=lambda: next(_SERIALS))

    @property
    def nbytes(self) -> int:
        """Memory its matrices take: as read, and the copies an executor made of them."""
        tensors = [t for pair in [*self.weights.values(), *self.fused.values()]
                   if pair is not None for t in pair]
        return sum({t.data_ptr(): t.nbytes for t in tensors}.values())

    def keep_only(self, wanted: Callable[[Any], bool]) -> None:
        """Drop the matrices an executor will not read again: the ones as read, and the
        copies whose key `wanted` refuses (the C forward keeps its own copies only)."""
        self.weights = {}
        self.fused = {key: pair for key, pair in self.fused.items() if wanted(key)}


def check_name(name: str) -> str:
    """An adapter name as requests and listings carry it."""
    if not NAME.match(name):
        raise AdapterError(f"adapter name {name!r:.80} must be 1 to 64 letters, digits, `.`, `_` "
                           "or `-`, starting with a letter or digit")
    return name


def read_config(name: str, path: Path) -> dict[str, Any]:
    """The adapter's `adapter_config.json`, checked for what this engine computes."""
    config_file = path / CONFIG_FILE
    if not path.is_dir():
        raise AdapterError(f"adapter `{name}`: {path} is not a directory (give the directory "
                           "PEFT's save_pretrained wrote)")
    for needed in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / needed).is_file():
            raise AdapterError(f"adapter `{name}`: {path} has no {needed} (PEFT's save_pretrained "
                               f"writes {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as exc:
        raise AdapterError(f"adapter `{name}`: {config_file} is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        kind = config.get("peft_type") if isinstance(config, dict) else None
        raise AdapterError(f"adapter `{name}`: peft_type is {kind!r}; only LORA adapters are "
                           "served")
    for option, default in _DEFAULTS.items():
        value = config.get(option)
        if value is not None and value != default:
            raise AdapterError(f"adapter `{name}`: `{option}` is {config[option]!r:.80}; this "
                               f"engine serves LoRA with `{option}` {default!r} only")
    return config


def read_adapter(name: str, path: Path, base_linears: Mapping[str, tuple[int, int]],
                 max_rank: int, dtype: torch.dtype, device: torch.device) -> LoraAdapter:
    """Read and check the adapter at `path` against the base model's linear layers
    (`base_linears`: module name -> (in_features, out_features))."""
    from safetensors.torch import load_file

    check_name(name)
    config = read_config(name, path)
    rank = config.get("r")
    if not isinstance(rank, int) or not 1 <= rank <= max_rank:
        raise AdapterError(f"adapter `{name}`: rank r={rank!r} is outside 1..{max_rank}, the "
                           "ranks this server takes (raise LLM_MAX_LORA_RANK to serve it)")
    alpha = float(config.get("lora_alpha", rank))
    scaling = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
    try:
        tensors = load_file(str(path / WEIGHTS_FILE))
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise AdapterError(f"adapter `{name}`: {path / WEIGHTS_FILE} cannot be read ({exc})") \
            from None
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _TENSOR.match(key)
        if match is None:
            raise AdapterError(f"adapter `{name}`: tensor `{key}` is not a LoRA A or B matrix "
                               "(only LoRA on linear layers is served)")
        halves.setdefault(match["module"], {})[match["half"]] = tensor
    if not halves:
        raise AdapterError(f"adapter `{name}`: {WEIGHTS_FILE} holds no LoRA weights")
    weights = {}
    for module, pair in sorted(halves.items()):
        weights[module] = _checked_pair(name, module, pair, rank, base_linears, scaling,
                                        dtype, device)
        time.sleep(0)  # let the engine thread's step have the interpreter between modules
    return LoraAdapter(name=name, path=path, rank=rank, scaling=scaling, weights=weights,
                       targets=sorted({module.rsplit(".", 1)[-1] for module in weights}))


def _checked_pair(name: str, module: str, pair: Mapping[str, torch.Tensor], rank: int,
                  base_linears: Mapping[str, tuple[int, int]], scaling: float,
                  dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One module's (A, scaled B), after checking it fits the base model's layer."""
    if module not in base_linears:
        short = module.rsplit(".", 1)[-1]
        raise AdapterError(f"adapter `{name}`: target module `{module}` is not a linear layer of "
                           f"the base model (target_modules `{short}`; was it trained for "
                           "another base model?)")
    if set(pair) != {"A", "B"}:
        raise AdapterError(f"adapter `{name}`: `{module}` has lora_{''.join(pair)} without its "
                           "other half")
    a, b = pair["A"], pair["B"]
    width, height = base_linears[module]
    if a.shape[0] != rank or b.shape[1] != rank:
        raise AdapterError(f"adapter `{name}`: `{module}` has rank {a.shape[0]} but its "
                           f"adapter_config.json says r={rank}")
    if a.shape[1] != width or b.shape[0] != height:
        raise AdapterError(f"adapter `{name}`: base model mismatch: `{module}` maps {width} -> "
                           f"{height} features in the base model but {a.shape[1]} -> "
                           f"{b.shape[0]} in the adapter (it was trained for another base "
                           "model)")
    return (a.to(device=device, dtype=dtype).contiguous(),
            (b.to(torch.float32) * scaling).to(device=device, dtype=dtype).contiguous())


def config_linears(model_dir: Path) -> dict[str, tuple[int, int]]:
    """`base_linears` of the model at `model_dir`, from its config alone: the model is built
    on the meta device, so no weight is read or allocated. For an engine that loads the model
    itself (vLLM) yet checks adapters as the transformers engine does."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return base_linears(model)


def base_linears(model: Any) -> dict[str, tuple[int, int]]:
    """The base model's linear layers an adapter may target: name -> (in, out) features.
    The output projection (lm_head) is left out: it is tied to the embedding in many models,
    and adapting it is not LoRA on a decoder layer."""
    head = model.get_output_embeddings()
    return {name: (m.in_features, m.out_features) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not head}
