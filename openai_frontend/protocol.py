"""OpenAI request bodies parsed once into what the model is asked (parse, don't validate).

Only what this API implements is read; unknown fields are ignored, as vLLM does, so clients
that send newer fields keep working. Fields that would change the answer and are not
implemented are refused with a 400 naming them, never silently dropped. Ranges (`max_tokens`
against the context, `top_p` in (0, 1], ...) are the model's to check: it knows its limits and
its messages name the field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from contracts.logprobs import MAX_TOP_LOGPROBS
from contracts.tensors import MAX_CHOICES

from .errors import invalid

MAX_SEED = 2**64 - 1


@dataclass(frozen=True)
class Sampling:
    """The generation parameters, under the model's input names; None: the model's default."""

    max_tokens: Optional[int] = None
    temperature: float = 1.0  # OpenAI's default (the model's own default is greedy)
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    seed: Optional[int] = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    min_tokens: Optional[int] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    repetition_penalty: Optional[float] = None
    logit_bias: Optional[str] = None  # the JSON object as text, checked by the model
    logprobs: Optional[int] = None  # alternatives per generated token (None: no logprobs)
    prompt_logprobs: Optional[int] = None  # the same for the prompt (completions' echo)
    n: Optional[int] = None  # choices from one prompt (None: one)


@dataclass(frozen=True)
class Request:
    """One validated /v1/completions or /v1/chat/completions request."""

    model: str
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False
    echo: bool = False  # completions only: the answer starts with the prompt
    prompt: str = ""  # completions
    prompt_ids: tuple[int, ...] = ()  # completions: a prompt sent as token ids
    messages: tuple[dict[str, str], ...] = field(default_factory=tuple)  # chat


# Parameters this API does not implement, refused when set to anything but their neutral
# value, with the reason a client needs.
_REFUSED = {
    "best_of": (lambda v: v not in (None, 1), "only `best_of: 1` is supported"),
    "tools": (lambda v: v not in (None, []), "tool calling is not supported"),
    "tool_choice": (lambda v: v not in (None, "none", "auto"), "tool calling is not supported"),
    "functions": (lambda v: v not in (None, []), "function calling is not supported"),
    "response_format": (lambda v: v not in (None, {"type": "text"}),
                        "only `response_format: {\"type\": \"text\"}` is supported"),
    "suffix": (lambda v: v not in (None, ""), "`suffix` (insertion) is not supported"),
}


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    for name, (refused, why) in _REFUSED.items():
        if refused(body.get(name)):
            raise invalid(f"{why}; got `{name}`: {body.get(name)!r:.80}", name)
    return body


def _number(body: dict[str, Any], name: str) -> Optional[float]:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise invalid(f"`{name}` must be a number, got {value!r:.40}", name)
    return float(value)


def _integer(body: dict[str, Any], name: str, minimum: int,
             maximum: Optional[int] = None) -> Optional[int]:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
            maximum is not None and value > maximum):
        limit = f"an integer >= {minimum}" if maximum is None else (
            f"an integer in [{minimum}, {maximum}]")
        raise invalid(f"`{name}` must be {limit}, got {value!r:.40}", name)
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(f"`{name}` must be true or false, got {value!r:.40}", name)
    return value


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise invalid("`stop` must be a string or a list of strings", "stop")
    return tuple(s for s in items if s)


def _logit_bias(body: dict[str, Any]) -> Optional[str]:
    """OpenAI's `{"<token id>": <bias>}`, passed on as JSON; ids and ranges are the model's
    to check (it knows its vocabulary)."""
    value = body.get("logit_bias")
    if value in (None, {}):
        return None
    if not isinstance(value, dict):
        raise invalid(f"`logit_bias` must be an object of token id -> bias, got {value!r:.40}",
                      "logit_bias")
    return json.dumps(value)


def _sampling(body: dict[str, Any], least_tokens: int = 1) -> Sampling:
    # `max_completion_tokens` is the newer name and wins, as in OpenAI's API.
    max_tokens = _integer(body, "max_completion_tokens", least_tokens)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", least_tokens)
    temperature = _number(body, "temperature")
    top_k = _integer(body, "top_k", -1)
    n = _integer(body, "n", 1, MAX_CHOICES)
    return Sampling(
        max_tokens=max_tokens,
        temperature=1.0 if temperature is None else temperature,
        top_p=_number(body, "top_p"),
        top_k=None if top_k in (None, -1) else top_k,  # vLLM's -1 means off
        seed=_integer(body, "seed", 0, MAX_SEED),
        stop=_stop(body),
        ignore_eos=_flag(body, "ignore_eos"),
        min_tokens=_integer(body, "min_tokens", 0),
        presence_penalty=_number(body, "presence_penalty"),
        frequency_penalty=_number(body, "frequency_penalty"),
        repetition_penalty=_number(body, "repetition_penalty"),
        logit_bias=_logit_bias(body),
        n=None if n in (None, 1) else n,
    )


def _stream_options(body: dict[str, Any], stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise invalid("`stream_options` must be an object", "stream_options")
    if not stream:
        raise invalid("`stream_options` is only allowed with `stream: true`", "stream_options")
    return _flag(options, "include_usage")


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("`model` is required: the id from GET /v1/models", "model")
    return model


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(i, int) and not isinstance(i, bool) for i in value)


def _prompt(value: Any) -> tuple[str, tuple[int, ...]]:
    """One prompt: a string, or token ids (a list of integers, as tokenizing clients such as
    lm-evaluation-harness send), either alone or as a list of one. The ids' range is the
    model's to check."""
    if isinstance(value, list) and len(value) == 1 and (isinstance(value[0], str)
                                                        or _is_ids(value[0])):
        value = value[0]
    if isinstance(value, str):
        return value, ()
    if _is_ids(value):
        return "", tuple(value)
    raise invalid("`prompt` must be a string or a list of token ids (one prompt per request)",
                  "prompt")


def parse_completion(body: Any) -> Request:
    """A completion; `logprobs` (an integer: alternatives per token) with `echo` also scores
    the prompt, and `echo` allows `max_tokens: 0` (the prompt alone, as vLLM)."""
    body = _object(body)
    prompt, prompt_ids = _prompt(body.get("prompt"))
    stream = _flag(body, "stream")
    echo = _flag(body, "echo")
    logprobs = _integer(body, "logprobs", 0, MAX_TOP_LOGPROBS)
    sampling = _sampling(body, least_tokens=0 if echo else 1)
    if echo and logprobs is not None:
        if stream:
            raise invalid("the prompt's logprobs (`echo` with `logprobs`) are only returned "
                          "without `stream`", "echo")
        sampling = replace(sampling, prompt_logprobs=logprobs)
    elif sampling.max_tokens == 0:  # the model scores a prompt that generates nothing
        sampling = replace(sampling, prompt_logprobs=0)
    return Request(model=_model(body), sampling=replace(sampling, logprobs=logprobs),
                   stream=stream, include_usage=_stream_options(body, stream), echo=echo,
                   prompt=prompt, prompt_ids=prompt_ids)


def _content(message: dict[str, Any], index: int) -> str:
    """A message's text: a string, or text parts joined."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(
                    part.get("text"), str):
                raise invalid("only text content parts (`{\"type\": \"text\", \"text\": ...}`)"
                              " are supported", f"messages[{index}].content")
            texts.append(part["text"])
        return "".join(texts)
    raise invalid("`content` must be a string or a list of text parts",
                  f"messages[{index}].content")


def _messages(body: dict[str, Any]) -> tuple[dict[str, str], ...]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("`messages` must be a non-empty list of {role, content} objects",
                      "messages")
    parsed = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise invalid("each message needs a string `role`", f"messages[{index}]")
        parsed.append({"role": message["role"], "content": _content(message, index)})
    return tuple(parsed)


def parse_chat(body: Any) -> Request:
    """A chat completion; `logprobs: true` with `top_logprobs` alternatives per token."""
    body = _object(body)
    messages = _messages(body)
    stream = _flag(body, "stream")
    top = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    logprobs = _flag(body, "logprobs")
    if top is not None and not logprobs:
        raise invalid("`top_logprobs` needs `logprobs: true`", "top_logprobs")
    sampling = replace(_sampling(body), logprobs=(top or 0) if logprobs else None)
    return Request(model=_model(body), sampling=sampling, stream=stream,
                   include_usage=_stream_options(body, stream), messages=messages)


@dataclass(frozen=True)
class TokenizeRequest:
    """POST /tokenize, vLLM's shape: a completion `prompt` or chat `messages`."""

    model: str
    prompt: Optional[str] = None
    messages: tuple[dict[str, str], ...] = ()
    add_special_tokens: bool = True  # for a prompt; a rendered chat template has its own
    add_generation_prompt: bool = True
    return_token_strs: bool = False


def _optional_flag(body: dict[str, Any], name: str, default: bool) -> bool:
    return default if body.get(name) is None else _flag(body, name)


def parse_tokenize(body: Any) -> TokenizeRequest:
    body = _object(body)
    model = _model(body)
    if ("prompt" in body) == ("messages" in body):
        raise invalid("send either `prompt` (a string) or `messages` (a chat), not both",
                      "prompt")
    flags = dict(return_token_strs=_optional_flag(body, "return_token_strs", False),
                 add_generation_prompt=_optional_flag(body, "add_generation_prompt", True))
    if "prompt" in body:
        prompt = body["prompt"]
        if not isinstance(prompt, str):
            raise invalid("`prompt` must be a string", "prompt")
        return TokenizeRequest(model, prompt=prompt,
                               add_special_tokens=_optional_flag(body, "add_special_tokens",
                                                                 True), **flags)
    return TokenizeRequest(model, messages=_messages(body),
                           add_special_tokens=_optional_flag(body, "add_special_tokens", False),
                           **flags)


def parse_detokenize(body: Any, vocab_size: int) -> tuple[str, list[int]]:
    """POST /detokenize, vLLM's shape: the model and its `tokens`."""
    body = _object(body)
    model = _model(body)
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab_size
            for t in tokens):
        raise invalid(f"`tokens` must be a list of token ids in [0, {vocab_size - 1}]",
                      "tokens")
    return model, tokens


def parse_lora_command(body: Any, load: bool) -> tuple[str, str]:
    """POST /v1/load_lora_adapter (`lora_name`, `lora_path`) or /v1/unload_lora_adapter
    (`lora_name`), vLLM's shapes: (name, path; "" when unloading)."""
    body = _object(body)
    fields = ("lora_name", "lora_path") if load else ("lora_name",)
    values = []
    for name in fields:
        value = body.get(name)
        if not isinstance(value, str) or not value.strip():
            raise invalid(f"`{name}` must be a non-empty string", name)
        values.append(value.strip())
    return values[0], values[1] if load else ""
