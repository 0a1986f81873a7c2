"""Turn one raw request into a validated, immutable `GenerationRequest` (parse, don't validate).

Why here and not in `model.py`: every rule is pure and unit-tested without Triton, and the
engine accepts only `GenerationRequest`, so an unchecked value can never reach sampling.
Each failure raises `ValidationError` naming the parameter, the rule and the value received;
`model.py` maps that single type to Triton's INVALID_ARG (HTTP 400 / gRPC INVALID_ARGUMENT).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from contracts.logprobs import MAX_TOP_LOGPROBS
from contracts.tensors import MAX_CHOICES
from textgen.core.config import Limits

MAX_STOP_STRINGS = 8
MAX_STOP_LENGTH = 128
MAX_SEED = 2**63 - 1
MAX_PENALTY = 2.0         # presence and frequency penalties: [-2, 2], as OpenAI's API
MAX_LOGIT_BIAS = 100.0    # a bias in [-100, 100], as OpenAI's API
MAX_LOGIT_BIAS_TOKENS = 1024


class ValidationError(ValueError):
    """A client mistake in one request; its message is shown to the client as is."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"`{parameter}` {message}")
        self.parameter = parameter


class UnknownAdapter(ValidationError):
    """A request named an adapter this replica does not serve (HTTP 404, naming those it does;
    textgen/adapters)."""

    def __init__(self, name: str, served: list[str]) -> None:
        listed = ", ".join(f"`{n}`" for n in served) if served else "none"
        super().__init__("adapter", f"{name!r:.80} is not served here; the adapters served: "
                                    f"{listed}")
        self.name = name


class ModelAccessDenied(ValidationError):
    """The caller's key may not use this model or adapter (HTTP 403; gateway/keys.py MODELS)."""

    def __init__(self, name: str, allowed: str) -> None:
        super().__init__("adapter", f"{name!r:.80}: this API key may not use it; it may use "
                                    f"{allowed:.400}")


@dataclass(frozen=True)
class GenerationRequest:
    """Everything the engine needs for one sequence, already checked and defaulted."""

    prompt: str
    max_tokens: int
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k cut
    seed: Optional[int] = None
    stop: tuple[str, ...] = ()
    exclude_input_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: int = 0  # neither EOS nor a stop string ends the sequence before this
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # 1 means none
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias), ids ascending
    # None: not asked; k: each generated token's (prompt token's) logprob and the top k there
    logprobs: Optional[int] = None
    prompt_logprobs: Optional[int] = None
    # The prompt's tokens when the client sent them (input_ids); else the engine tokenizes
    prompt_ids: tuple[int, ...] = ()
    n: int = 1  # sequences from this prompt, each with its own `index` and random stream
    adapter: str = ""  # the LoRA adapter to run (textgen/adapters); "": the base model

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def penalized(self) -> bool:
        """Whether the row's logits depend on the tokens it has seen."""
        return (self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
                or self.repetition_penalty != 1.0)

    @property
    def reshapes_logits(self) -> bool:
        """Whether sampling changes this row's logits before drawing (bias or penalties),
        which needs a per-sequence record of arrays."""
        return bool(self.logit_bias) or self.penalized


def _scalar(name: str, value: Optional[np.ndarray]) -> Any:
    """One element from a tensor of any shape that holds exactly one element, or None."""
    if value is None:
        return None
    array = np.asarray(value)
    if array.size != 1:
        raise ValidationError(name, f"must hold exactly one value, got shape {list(array.shape)}")
    return array.reshape(-1)[0]


def _text(name: str, raw: Any) -> str:
    if isinstance(raw, (bytes, np.bytes_)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValidationError(name, f"must be valid UTF-8 ({exc.reason} at byte "
                                        f"{exc.start})") from None
    if not isinstance(raw, str):
        raise ValidationError(name, f"must be a string, got {type(raw).__name__}")
    if "\x00" in raw:
        raise ValidationError(name, "must not contain NUL characters")
    return raw


def _number(name: str, raw: Any, low: float, high: float, *, low_open: bool = False) -> float:
    if isinstance(raw, (bytes, str, np.bytes_, np.str_)) or not np.isscalar(raw):
        raise ValidationError(name, f"must be a number, got {raw!r}")
    value = float(raw)
    if not math.isfinite(value):
        raise ValidationError(name, f"must be a finite number, got {value}")
    below = value <= low if low_open else value < low
    if below or value > high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ValidationError(name, f"must be in {interval}, got {value:g}")
    return value


def _integer(name: str, raw: Any, low: int, high: int) -> int:
    if isinstance(raw, (bool, np.bool_)) or not isinstance(raw, (int, np.integer)):
        raise ValidationError(name, f"must be an integer, got {raw!r}")
    value = int(raw)
    if not low <= value <= high:
        raise ValidationError(name, f"must be in [{low}, {high}], got {value}")
    return value


def parse_flag(name: str, raw: Optional[np.ndarray], default: bool) -> bool:
    """A boolean input of one element (e.g. `llm_stream`'s `stream`)."""
    return _flag(name, _scalar(name, raw), default)


def _flag(name: str, raw: Any, default: bool) -> bool:
    if raw is None:
        return default
    if not isinstance(raw, (bool, np.bool_)):
        raise ValidationError(name, f"must be a boolean, got {raw!r}")
    return bool(raw)


def _stop(raw: Optional[np.ndarray]) -> tuple[str, ...]:
    if raw is None:
        return ()
    items: Sequence[Any] = np.asarray(raw).reshape(-1).tolist()
    if len(items) > MAX_STOP_STRINGS:
        raise ValidationError("stop", f"may hold at most {MAX_STOP_STRINGS} strings, "
                                      f"got {len(items)}")
    stops = tuple(_text("stop", item) for item in items)
    for stop in stops:
        if not 0 < len(stop) <= MAX_STOP_LENGTH:
            raise ValidationError("stop", f"strings must have 1 to {MAX_STOP_LENGTH} "
                                          f"characters, got {len(stop)}")
    return stops


def _logit_bias(raw: Any, vocab_size: int) -> tuple[tuple[int, float], ...]:
    """`{"<token id>": <bias>, ...}` as JSON text (OpenAI's `logit_bias`)."""
    if raw is None:
        return ()
    try:
        parsed = json.loads(_text("logit_bias", raw))
    except ValueError as exc:
        raise ValidationError("logit_bias", f"must be a JSON object, got invalid JSON ({exc})")
    if not isinstance(parsed, dict):
        raise ValidationError("logit_bias", "must be a JSON object of token id -> bias")
    if len(parsed) > MAX_LOGIT_BIAS_TOKENS:
        raise ValidationError("logit_bias", f"may name at most {MAX_LOGIT_BIAS_TOKENS} tokens, "
                                            f"got {len(parsed)}")
    biases = {}
    for key, bias in parsed.items():
        if not (isinstance(key, str) and key.isdigit() and int(key) < vocab_size):
            raise ValidationError("logit_bias", f"keys must be token ids in [0, {vocab_size - 1}]"
                                                f", got {key!r:.40}")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)):
            raise ValidationError("logit_bias", f"values must be numbers, got {bias!r:.40}")
        biases[int(key)] = _number("logit_bias", bias, -MAX_LOGIT_BIAS, MAX_LOGIT_BIAS)
    return tuple(sorted(biases.items()))


def _token_ids(raw: Optional[np.ndarray], limits: Limits) -> tuple[int, ...]:
    """`input_ids`: one row of token ids, each in the vocabulary (its length is checked
    against max_prompt_tokens with a tokenized prompt's, in check_token_budget)."""
    if raw is None:
        return ()
    array = np.asarray(raw)
    if array.dtype.kind not in "iu":
        raise ValidationError("input_ids", f"must be integers, got {array.dtype}")
    ids = array.reshape(-1)
    if array.ndim > 1 and array.shape[0] != 1:
        raise ValidationError("input_ids", f"must be one row of token ids, got shape "
                                           f"{list(array.shape)}")
    if not ids.size:
        raise ValidationError("input_ids", "must not be empty")
    if ids.min() < 0 or ids.max() >= limits.vocab_size:
        bad = int(ids[(ids < 0) | (ids >= limits.vocab_size)][0])
        raise ValidationError("input_ids", f"must be token ids in [0, {limits.vocab_size - 1}]"
                                           f", got {bad}")
    return tuple(int(i) for i in ids)


def parse_choices(raw: Optional[np.ndarray]) -> int:
    """`n`: how many sequences (choices) one request asks for, 1 to MAX_CHOICES."""
    value = _scalar("n", raw)
    return 1 if value is None else _integer("n", value, 1, MAX_CHOICES)


def parse_request(inputs: Mapping[str, Optional[np.ndarray]], limits: Limits) -> GenerationRequest:
    """Validate the named input tensors of one request (absent optional inputs are None)."""
    prompt = _text("text_input", _scalar("text_input", inputs.get("text_input")))
    if not prompt.strip() and inputs.get("input_ids") is None:  # ids: the text may be blank
        raise ValidationError("text_input", "must not be empty")
    if len(prompt) > limits.max_prompt_chars:
        raise ValidationError("text_input", f"must have at most {limits.max_prompt_chars} "
                                            f"characters, got {len(prompt)}")

    max_tokens = _scalar("max_tokens", inputs.get("max_tokens"))
    temperature = _scalar("temperature", inputs.get("temperature"))
    top_p = _scalar("top_p", inputs.get("top_p"))
    top_k = _scalar("top_k", inputs.get("top_k"))
    seed = _scalar("seed", inputs.get("seed"))
    logprobs = _scalar("logprobs", inputs.get("logprobs"))
    prompt_logprobs = _scalar("prompt_logprobs", inputs.get("prompt_logprobs"))
    if prompt_logprobs is not None:
        prompt_logprobs = _integer("prompt_logprobs", prompt_logprobs, 0, MAX_TOP_LOGPROBS)
    # max_tokens 0 only scores the prompt: it needs prompt_logprobs.
    max_tokens = (limits.default_max_tokens if max_tokens is None
                  else _integer("max_tokens", max_tokens, 0 if prompt_logprobs is not None else 1,
                                limits.max_new_tokens))
    min_tokens = _scalar("min_tokens", inputs.get("min_tokens"))
    presence = _scalar("presence_penalty", inputs.get("presence_penalty"))
    frequency = _scalar("frequency_penalty", inputs.get("frequency_penalty"))
    repetition = _scalar("repetition_penalty", inputs.get("repetition_penalty"))
    return GenerationRequest(
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=0.0 if temperature is None else _number("temperature", temperature, 0, 2),
        top_p=1.0 if top_p is None else _number("top_p", top_p, 0, 1, low_open=True),
        top_k=0 if top_k is None else _integer("top_k", top_k, 0, limits.vocab_size),
        seed=None if seed is None else _integer("seed", seed, 0, MAX_SEED),
        stop=_stop(inputs.get("stop")),
        exclude_input_in_output=_flag("exclude_input_in_output",
                                      _scalar("exclude_input_in_output",
                                              inputs.get("exclude_input_in_output")), False),
        ignore_eos=_flag("ignore_eos", _scalar("ignore_eos", inputs.get("ignore_eos")), False),
        min_tokens=0 if min_tokens is None else _integer("min_tokens", min_tokens, 0, max_tokens),
        presence_penalty=0.0 if presence is None else _number("presence_penalty", presence,
                                                              -MAX_PENALTY, MAX_PENALTY),
        frequency_penalty=0.0 if frequency is None else _number("frequency_penalty", frequency,
                                                                -MAX_PENALTY, MAX_PENALTY),
        repetition_penalty=1.0 if repetition is None else _number(
            "repetition_penalty", repetition, 0, MAX_PENALTY, low_open=True),
        logit_bias=_logit_bias(_scalar("logit_bias", inputs.get("logit_bias")),
                               limits.vocab_size),
        logprobs=None if logprobs is None else _integer("logprobs", logprobs, 0,
                                                        MAX_TOP_LOGPROBS),
        prompt_logprobs=prompt_logprobs,
        prompt_ids=_token_ids(inputs.get("input_ids"), limits),
        n=parse_choices(inputs.get("n")),
        adapter=_adapter(inputs.get("adapter")),
    )


def _adapter(raw: Optional[np.ndarray]) -> str:
    """`adapter`: a name (the engine says whether it serves it); empty means the base model."""
    value = _scalar("adapter", raw)
    return "" if value is None else _text("adapter", value).strip()


def check_token_budget(prompt_tokens: int, request: GenerationRequest, limits: Limits) -> None:
    """Reject what can never fit, after tokenising and before queueing, with both numbers."""
    if prompt_tokens > limits.max_prompt_tokens:
        raise ValidationError("text_input", f"has {prompt_tokens} tokens; the limit is "
                                            f"{limits.max_prompt_tokens}")
    if prompt_tokens + request.max_tokens > limits.context_length:
        raise ValidationError(
            "max_tokens",
            f"plus the prompt must fit the model's context: {prompt_tokens} prompt tokens + "
            f"{request.max_tokens} max_tokens = {prompt_tokens + request.max_tokens} > "
            f"{limits.context_length}")
