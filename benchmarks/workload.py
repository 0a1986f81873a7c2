"""The benchmark workloads: deterministic lists of requests with exact prompt and output lengths.

Prompts are windows of `demo_model/heldout.txt` (text the model never trained on) cut with the
served model's own tokenizer so that each prompt is exactly the wanted number of tokens, as the
server counts them (`tokenizer.encode(prompt)`). Every request sets `ignore_eos`, so the output
length is exactly `max_tokens` and all systems do the same amount of work.

  fixed  64 prompt tokens, 64 new tokens: the classic fixed-shape comparison
  mixed  prompt and output lengths drawn from log-normal (heavy-tailed) distributions with a
         fixed seed: many short requests and a few long ones, as real traffic looks
"""

from __future__ import annotations

import argparse
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEMPERATURE = 0.7  # the naive baseline samples at 0.7; every system gets the same request

FIXED_PROMPT_TOKENS = 64
FIXED_OUTPUT_TOKENS = 64
# Medians and spreads of the mixed workload (log-normal, clipped to what the model accepts).
MIXED_PROMPT = {"median": 64, "sigma": 1.0, "min": 4, "max": 384}
MIXED_OUTPUT = {"median": 48, "sigma": 1.0, "min": 4, "max": 256}
CONTEXT = 512
# Left free in every request for the chat template's tokens (`User: `, `Assistant: `), so the
# same request fits the context on the OpenAI path too (otherwise a correct 400 there).
TEMPLATE_ROOM = 16


@dataclass(frozen=True)
class RequestSpec:
    """One request of a workload; `body()` is the JSON of the generate extension."""

    index: int
    prompt: str
    prompt_tokens: int
    max_tokens: int
    seed: int

    def body(self) -> dict[str, Any]:
        return {"text_input": self.prompt, "max_tokens": self.max_tokens, "ignore_eos": True,
                "exclude_input_in_output": True, "temperature": TEMPERATURE, "seed": self.seed}

    def completion_body(self, model: str) -> dict[str, Any]:
        """The same request on an OpenAI-compatible /v1/completions route, streamed with usage."""
        return {"model": model, "prompt": self.prompt, "max_tokens": self.max_tokens,
                "ignore_eos": True, "temperature": TEMPERATURE, "seed": self.seed,
                "stream": True, "stream_options": {"include_usage": True}}

    def chat_body(self, model: str) -> dict[str, Any]:
        """The same request on the OpenAI API's /v1/chat/completions, streamed with usage (the
        chat template adds a few prompt tokens: `User: `, `Assistant: `)."""
        return {"model": model, "messages": [{"role": "user", "content": self.prompt}],
                "max_tokens": self.max_tokens, "ignore_eos": True, "temperature": TEMPERATURE,
                "seed": self.seed, "stream": True, "stream_options": {"include_usage": True}}


class PromptSource:
    """Cuts held-out text into prompts of an exact token count."""

    def __init__(self, tokenizer: Any, text: str) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = tokenizer.encode(text)
        if len(self.ids) < 2 * MIXED_PROMPT["max"]:
            raise SystemExit(f"held-out text has only {len(self.ids)} tokens; need at least "
                             f"{2 * MIXED_PROMPT['max']}")

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def prompt(self, n_tokens: int, rng: random.Random) -> str:
        """A window of the text that the tokenizer turns into exactly `n_tokens` tokens.

        Decoding a window and encoding it again can merge or split tokens at the edges, so
        try a few windows and trim by one token at a time until the count is exact.
        """
        for _ in range(50):
            start = rng.randrange(0, len(self.ids) - n_tokens - 8)
            window = self.ids[start:start + n_tokens + 8]
            for extra in range(8, -1, -1):
                text = self.tokenizer.decode(window[:n_tokens + extra])
                if text.strip() and "\ufffd" not in text and self.count(text) == n_tokens:
                    return text
        raise RuntimeError(f"could not cut a prompt of exactly {n_tokens} tokens")


def _lognormal(rng: random.Random, spec: dict[str, float]) -> int:
    value = rng.lognormvariate(math.log(spec["median"]), spec["sigma"])
    return int(min(spec["max"], max(spec["min"], round(value))))


def build(name: str, count: int, source: PromptSource, seed: int) -> list[RequestSpec]:
    """The first `count` requests of workload `name`; the same seed gives the same list."""
    rng = random.Random(f"{name}-{seed}")
    specs = []
    for i in range(count):
        if name == "fixed":
            prompt_tokens, max_tokens = FIXED_PROMPT_TOKENS, FIXED_OUTPUT_TOKENS
        elif name == "mixed":
            prompt_tokens = _lognormal(rng, MIXED_PROMPT)
            max_tokens = min(_lognormal(rng, MIXED_OUTPUT),
                             CONTEXT - TEMPLATE_ROOM - prompt_tokens)
        else:
            raise ValueError(f"unknown workload {name!r}; use fixed or mixed")
        specs.append(RequestSpec(i, source.prompt(prompt_tokens, rng), prompt_tokens,
                                 max_tokens, seed=seed * 100_003 + i))
    return specs


def describe(name: str) -> str:
    if name == "fixed":
        return (f"{FIXED_PROMPT_TOKENS} prompt tokens, {FIXED_OUTPUT_TOKENS} new tokens, "
                f"ignore_eos, temperature {TEMPERATURE}")
    return (f"prompt tokens log-normal (median {MIXED_PROMPT['median']}, sigma "
            f"{MIXED_PROMPT['sigma']}, {MIXED_PROMPT['min']}-{MIXED_PROMPT['max']}), new tokens "
            f"log-normal (median {MIXED_OUTPUT['median']}, sigma {MIXED_OUTPUT['sigma']}, "
            f"{MIXED_OUTPUT['min']}-{MIXED_OUTPUT['max']}), ignore_eos, temperature "
            f"{TEMPERATURE}, fixed seed")


def perf_analyzer_input(specs: list[RequestSpec], path: Path) -> Path:
    """perf_analyzer's --input-data JSON: one entry per request, typed as the model declares."""
    import json

    data = []
    for spec in specs:
        body = spec.body()
        data.append({
            "text_input": {"content": [body["text_input"]], "shape": [1]},
            "max_tokens": {"content": [body["max_tokens"]], "shape": [1]},
            "temperature": {"content": [body["temperature"]], "shape": [1]},
            "seed": {"content": [body["seed"]], "shape": [1]},
            "ignore_eos": {"content": [True], "shape": [1]},
            "exclude_input_in_output": {"content": [True], "shape": [1]},
        })
    path.write_text(json.dumps({"data": data}))
    return path


def summary(specs: list[RequestSpec]) -> dict[str, Any]:
    """Length statistics of a workload, for the report."""
    def stats(values: list[int]) -> dict[str, float]:
        ordered = sorted(values)
        return {"min": ordered[0], "p50": ordered[len(ordered) // 2],
                "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
                "max": ordered[-1], "mean": round(sum(ordered) / len(ordered), 1)}
    return {"requests": len(specs), "prompt_tokens": stats([s.prompt_tokens for s in specs]),
            "output_tokens": stats([s.max_tokens for s in specs])}



def fresh_fixed(source: PromptSource, count: int, round_: int,
                concurrency: int) -> list[RequestSpec]:
    """The fixed workload with new prompts for every round and level of a comparison.

    Why: the peers cache prompts (llama.cpp's server keeps each slot's last prompt,
    `cache_prompt`; vLLM has a prefix cache), this engine does not; a prompt sent again skips
    its prefill there (llama.cpp's TTFT at one stream on the real model: docs/performance.md,
    Figures behind design choices) and measures a cache hit, not serving."""
    return build("fixed", count, source, 2024 + 1000 * (round_ + 1) + concurrency)


def rounds_parser(description: str, requests_per_client: int,
                  max_seconds: float) -> argparse.ArgumentParser:
    """The options of the scripts that compare systems round by round on the fixed workload
    (openai_overhead.py, cpu_peer.py)."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests-per-client", type=int, default=requests_per_client)
    parser.add_argument("--max-seconds", type=float, default=max_seconds)
    parser.add_argument("--model-dir", type=Path, default=Path(__file__).resolve().parent.parent
                        / "demo_model")
    parser.add_argument("--out", type=Path, help="write the raw rows as JSON here")
    return parser
