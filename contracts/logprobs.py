"""Log-probabilities of tokens: the records the engines make and their one wire form.

The `llm` and `llm_stream` models return them, when asked, as JSON text in their `logprobs`
and `prompt_logprobs` outputs (contracts/tensors.py); the OpenAI frontend reads that JSON back
into these records and writes OpenAI's two shapes from them. Both ends use `dumps`/`loads`
here, so the wire form is written once.

Which distribution: the model's own, before temperature, penalties and logit_bias change it
for sampling (vLLM's default, `raw_logprobs`). That is what an evaluation harness scores, and
it does not depend on how a request samples.

The wire form, one entry per position (`null` for a prompt's first token, which nothing
predicts):
    {"id": 9907, "token": " Paris", "logprob": -0.02,
     "top": [{"id": 9907, "token": " Paris", "logprob": -0.02}, ...]}
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple, Optional, Sequence

MAX_TOP_LOGPROBS = 20  # as OpenAI's `top_logprobs` and vLLM's default max_logprobs
# What -inf becomes: JSON has no infinity (vLLM's OpenAI server writes the same).
FLOOR = -9999.0


# Named tuples, not dataclasses: a step makes one record per asking row and one candidate per
# alternative (32 x 6 at 32 streams with top 5), and a frozen dataclass costs several times a
# tuple to make, which on a small model is a visible share of the step.

class Candidate(NamedTuple):
    """A token at one position, with the model's log-probability for it there."""

    token_id: int
    token: str  # the token's text alone (may hold U+FFFD for part of a character)
    logprob: float


class TokenLogprobs(NamedTuple):
    """One position: the token that is there (sampled or given) and the most likely ones,
    best first (as many as the request asked for)."""

    chosen: Candidate
    top: tuple[Candidate, ...] = ()


def _candidate(c: Candidate) -> dict[str, Any]:
    return {"id": c.token_id, "token": c.token, "logprob": c.logprob}


def dumps(positions: Sequence[Optional[TokenLogprobs]]) -> str:
    """The wire form of `positions` (None: a position nothing predicts)."""
    return json.dumps([None if p is None else {**_candidate(p.chosen),
                                               "top": [_candidate(c) for c in p.top]}
                       for p in positions], separators=(",", ":"))


def _read(entry: dict[str, Any]) -> Candidate:
    return Candidate(int(entry["id"]), str(entry["token"]), float(entry["logprob"]))


def loads(text: str) -> list[Optional[TokenLogprobs]]:
    """`dumps`'s inverse."""
    return [None if entry is None else TokenLogprobs(_read(entry),
                                                     tuple(_read(c) for c in entry["top"]))
            for entry in json.loads(text)]
