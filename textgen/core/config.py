"""The model's settings: read once from `config.pbtxt` parameters, overridable by environment.

Why one module: limits and engine knobs live in the model configuration (not in code), and the
few that an operator changes per deployment (model directory, device, dtype) can be overridden
by environment variables without editing the repository. Every bad value fails the model load
with a message that names the parameter and says what is accepted.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

log = logging.getLogger("textgen")

# parameter name in config.pbtxt -> environment variable that overrides it
ENV_OVERRIDES = {
    "model_dir": "LLM_MODEL_DIR",
    "engine": "LLM_ENGINE",
    "device": "LLM_DEVICE",
    "dtype": "LLM_DTYPE",
    "scheduling": "LLM_SCHEDULING",
    "executor": "LLM_EXECUTOR",
    "forward_path": "LLM_FORWARD_PATH",
    "quantization": "LLM_QUANTIZATION",
    "max_num_seqs": "LLM_MAX_NUM_SEQS",
    "max_queue_size": "LLM_MAX_QUEUE_SIZE",
    "queue_timeout_seconds": "LLM_QUEUE_TIMEOUT_S",
    "cpu_threads": "LLM_CPU_THREADS",
    "engine_nice": "LLM_ENGINE_NICE",
    "stream_interval_ms": "LLM_STREAM_INTERVAL_MS",
    "max_prefill_tokens": "LLM_MAX_PREFILL_TOKENS",
    "max_prompt_tokens": "LLM_MAX_PROMPT_TOKENS",
    "max_new_tokens": "LLM_MAX_NEW_TOKENS",
    "max_batch_total_tokens": "LLM_MAX_BATCH_TOTAL_TOKENS",
    "max_prompt_logits_mib": "LLM_MAX_PROMPT_LOGITS_MIB",
    "enable_lora": "LLM_ENABLE_LORA",
    "lora_adapters": "LLM_LORA_ADAPTERS",
    "max_loras": "LLM_MAX_LORAS",
    "max_lora_rank": "LLM_MAX_LORA_RANK",
    "adapter_record": "LLM_ADAPTER_RECORD",
}
ENGINES = ("auto", "transformers", "vllm")  # see engines.py
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
SCHEDULING = ("continuous", "static")
EXECUTORS = ("auto", "hf", "llama")  # see executor.py
FORWARD_PATHS = ("auto", "c", "tensor")  # see select_executor
# Settings renamed since: still read, with a warning naming the new one.
RENAMED = {"decode_step": ("forward_path", "LLM_DECODE_STEP")}
QUANTIZATIONS = ("none", "int8")


DEFAULT_CONTEXT = 2048  # a model whose config names no max_position_embeddings


def model_context(hf_config: Any) -> int:
    """A model's context length from its Hugging Face config: the loaded object, or the dict of
    its config.json (the gateway reads the file without transformers)."""
    value = (hf_config.get("max_position_embeddings") if isinstance(hf_config, Mapping)
             else getattr(hf_config, "max_position_embeddings", None))
    return int(value or DEFAULT_CONTEXT)


class ConfigError(ValueError):
    """A deployment mistake; the message says which parameter and how to fix it."""


@dataclass(frozen=True)
class Limits:
    """Request limits. As configured, a None limit follows the model; each engine serves
    `for_model(...)` of them, where `context_length` and `vocab_size` come from the loaded
    model and every limit is a number."""

    max_prompt_tokens: Optional[int] = None  # None: the context less the smallest answer
    max_new_tokens: Optional[int] = None  # None: the context (a prompt leaves less)
    default_max_tokens: int = 64  # when a request names no max_tokens
    context_length: int = 512
    vocab_size: int = 4096

    def for_model(self, context_length: int, vocab_size: int) -> "Limits":
        """These limits on a model of this context: what is not configured follows it, and
        nothing configured exceeds it."""
        prompt = context_length - 1
        new = min(self.max_new_tokens or context_length, context_length)
        return Limits(max_prompt_tokens=min(self.max_prompt_tokens or prompt, prompt),
                      max_new_tokens=new,
                      default_max_tokens=min(self.default_max_tokens, new),
                      context_length=context_length, vocab_size=vocab_size)

    @property
    def max_prompt_chars(self) -> int:
        """A cheap bound checked before tokenising, so a huge body never reaches the tokenizer."""
        assert self.max_prompt_tokens is not None, "limits not yet applied to a model"
        return self.max_prompt_tokens * 16


@dataclass(frozen=True)
class EngineConfig:
    model_dir: Path
    # auto: vLLM on CUDA where it is installed and runs the architecture, else transformers
    # (this package's own engine; faster through this stack on CPUs: docs/performance.md,
    # The two engines).
    engine: str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    scheduling: str = "continuous"
    # auto: the lean Llama-family forward where it computes exactly what the HF module does,
    # else the HF module (hf); llama insists on the lean one and fails the load otherwise.
    executor: str = "auto"
    # How the llama executor runs a float32 forward (decode steps and prefill) on a CPU. auto:
    # in C (textgen/executors/native, compiled at load) where a C compiler is present, else in
    # tensor operations; tensor turns the native code off; c insists and fails the load with
    # the reason otherwise.
    forward_path: str = "auto"
    quantization: str = "none"  # int8: 8-bit weights (bitsandbytes on CUDA, torch on CPU)
    max_num_seqs: int = 32
    # The running batch's token budget, rows counted padded to the widest (scheduler.py); it
    # bounds the KV cache. None (`auto`): textgen/core/kv_budget.py's rule.
    max_batch_total_tokens: Optional[int] = None
    max_queue_size: int = 128
    queue_timeout_s: float = 30.0
    # Threads the engine computes with on a CPU (the C forward's and torch's, one OpenMP pool).
    # None (`auto`): the cores this process may use less a share for the stack around it,
    # divided among the engines on the host (textgen/core/cpus.py has the rule).
    cpu_threads: Optional[int] = None
    # Scheduling priority (nice, -20..19) of the engine thread. Every token wakes Triton, the
    # stream model, Envoy and the client; at the same priority they preempt the decode step
    # (docs/performance.md, How the engine got here). Below 0 needs RLIMIT_NICE
    # (`ulimit -e 30`) or CAP_SYS_NICE (root); without either the engine keeps the process's
    # priority and logs how to allow it.
    engine_nice: int = -10
    # A streamed sequence hands its text on at most once per this many milliseconds (the
    # first token at once; what comes in between goes out as one piece). 0: every token.
    # 25 ms is below what a reader of a streamed answer notices (40 updates a second) and,
    # measured at many streams, carries several tokens per response and raises output tokens/s
    # through the gateway (docs/performance.md, How the engine got here).
    stream_interval_ms: int = 25
    # The most prompt tokens the transformers engine prefills in one step (oldest admitted
    # first; a longer prompt goes alone); the rest wait for the next step, after the running
    # rows decoded, as with chunked prefill. Why: a request that arrives during a step waits
    # for all of it, so a step's length is what a newcomer waits; and 32 arrivals at once no
    # longer all wait for all 32 prompts, then decode and finish in lockstep and arrive
    # together again. Measured in-process, 256 cut TTFT at the same tokens/s; a smaller budget
    # cut it further but cost tokens/s (docs/performance.md, Figures behind design choices).
    max_prefill_tokens: int = 256
    # Prompt logprobs need the logits of every prompt position, which the transformers engine
    # holds at once (float32, tokens x vocabulary): a request whose would be larger is refused
    # with the longest prompt it may score. 1 GiB is 5,461 tokens of a 49,152-token vocabulary.
    max_prompt_logits_mib: int = 1024
    # LoRA adapters (textgen/adapters, docs/adapters.md). On when `lora_adapters` names any
    # or `enable_lora` is set (so adapters can be loaded at run time). `lora_adapters`: (name,
    # directory) pairs served from the start; `adapter_record`: a JSON file of name ->
    # directory that every load and unload rewrites and, when it exists, the start reads
    # instead, so a restarted replica serves what it served. `max_loras`: adapters resident in
    # memory at once (idle ones evicted least recently used); `max_lora_rank`: the largest
    # rank taken.
    enable_lora: bool = False
    lora_adapters: tuple[tuple[str, Path], ...] = ()
    adapter_record: Optional[Path] = None
    max_loras: int = 8
    max_lora_rank: int = 64
    limits: Limits = Limits()


def _parameters(model_config: Mapping[str, Any]) -> dict[str, str]:
    raw = model_config.get("parameters", {}) or {}
    return {key: str(value.get("string_value", "")) for key, value in raw.items()}


def _positive_int(params: Mapping[str, str], name: str, default: int) -> int:
    raw = params.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) <= 0:
        raise ConfigError(f"parameter `{name}` must be a positive integer, got {raw!r}")
    return int(raw)


def _positive_int_or_auto(params: Mapping[str, str], name: str) -> Optional[int]:
    """A positive integer, or None for `auto` (or nothing): the model decides."""
    if params.get(name, "").strip().lower() in ("", "auto"):
        return None
    return _positive_int(params, name, 0)


def _int_in(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ConfigError(f"parameter `{name}` must be an integer from {low} to {high}, "
                          f"got {raw!r}")
    return value


def _choice(params: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    value = (params.get(name, "") or choices[0]).strip().lower()
    if value not in choices:
        raise ConfigError(f"parameter `{name}` must be one of {', '.join(choices)}, "
                          f"got {value!r}")
    return value


def _flag(params: Mapping[str, str], name: str) -> bool:
    value = params.get(name, "").strip().lower()
    if value not in ("", "0", "1", "true", "false", "yes", "no", "on", "off"):
        raise ConfigError(f"parameter `{name}` must be true or false, got {value!r}")
    return value in ("1", "true", "yes", "on")


def _adapters(params: Mapping[str, str], root: Path) -> tuple[tuple[str, Path], ...]:
    """`lora_adapters`: `name=directory,...`; relative directories from the project root."""
    pairs = []
    for item in filter(None, (part.strip() for part in params.get("lora_adapters", "")
                              .split(","))):
        name, equals, path = item.partition("=")
        if not equals or not name.strip() or not path.strip():
            raise ConfigError(f"parameter `lora_adapters` must be `name=directory,...`, got "
                              f"{item!r}")
        pairs.append((name.strip(), _resolved(Path(path.strip()), root)))
    return tuple(pairs)


def _resolved(path: Path, root: Path) -> Path:
    return path if path.is_absolute() else (root / path).resolve()


def load_engine_config(model_config: Mapping[str, Any], model_repository_dir: Path,
                       env: Mapping[str, str] = os.environ) -> EngineConfig:
    """Build the engine config from Triton's parsed model config.

    A relative `model_dir` is resolved against the project root, two levels above this
    model's directory in the repository (`<root>/model_repository/llm`).
    """
    params = _parameters(model_config)
    for name, variable in ENV_OVERRIDES.items():
        if env.get(variable):
            params[name] = env[variable]
    for old, (new, old_variable) in RENAMED.items():
        value = env.get(old_variable) or params.pop(old, None)
        if value and not env.get(ENV_OVERRIDES[new]):
            log.warning("`%s` (%s) is now `%s` (%s); the old name still works for now",
                        old, old_variable, new, ENV_OVERRIDES[new])
            params[new] = value
    if not params.get("model_dir"):
        raise ConfigError("parameter `model_dir` is empty: set it in config.pbtxt or export "
                          "LLM_MODEL_DIR=/path/to/final_model")
    root = model_repository_dir.parent.parent
    model_dir = _resolved(Path(params["model_dir"]), root)
    lora_adapters = _adapters(params, root)
    record = params.get("adapter_record", "").strip()

    limits = Limits(
        max_prompt_tokens=_positive_int_or_auto(params, "max_prompt_tokens"),
        max_new_tokens=_positive_int_or_auto(params, "max_new_tokens"),
        default_max_tokens=_positive_int(params, "default_max_tokens",
                                         Limits.default_max_tokens),
    )
    if limits.max_new_tokens is not None and limits.default_max_tokens > limits.max_new_tokens:
        raise ConfigError(f"parameter `default_max_tokens` ({limits.default_max_tokens}) must "
                          f"not exceed `max_new_tokens` ({limits.max_new_tokens})")
    return EngineConfig(
        model_dir=model_dir,
        engine=_choice(params, "engine", ENGINES),
        device=_choice(params, "device", DEVICES),
        dtype=_choice(params, "dtype", DTYPES),
        scheduling=_choice(params, "scheduling", SCHEDULING),
        executor=_choice(params, "executor", EXECUTORS),
        forward_path=_choice(params, "forward_path", FORWARD_PATHS),
        quantization=_choice(params, "quantization", QUANTIZATIONS),
        max_num_seqs=_positive_int(params, "max_num_seqs", EngineConfig.max_num_seqs),
        max_batch_total_tokens=_positive_int_or_auto(params, "max_batch_total_tokens"),
        max_queue_size=_positive_int(params, "max_queue_size", EngineConfig.max_queue_size),
        cpu_threads=_positive_int_or_auto(params, "cpu_threads"),
        engine_nice=_int_in(params, "engine_nice", EngineConfig.engine_nice, -20, 19),
        stream_interval_ms=_int_in(params, "stream_interval_ms", EngineConfig.stream_interval_ms,
                                   0, 1000),
        max_prefill_tokens=_positive_int(params, "max_prefill_tokens",
                                         EngineConfig.max_prefill_tokens),
        queue_timeout_s=float(_positive_int(params, "queue_timeout_seconds",
                                            int(EngineConfig.queue_timeout_s))),
        max_prompt_logits_mib=_positive_int(params, "max_prompt_logits_mib",
                                            EngineConfig.max_prompt_logits_mib),
        enable_lora=_flag(params, "enable_lora") or bool(lora_adapters),
        lora_adapters=lora_adapters,
        adapter_record=_resolved(Path(record), root) if record else None,
        max_loras=_positive_int(params, "max_loras", EngineConfig.max_loras),
        max_lora_rank=_positive_int(params, "max_lora_rank", EngineConfig.max_lora_rank),
        limits=limits,
    )
