"""Log-probabilities for the rows that ask: of each row's token and of the model's most likely
ones, from the raw logits (contracts/logprobs.py says why raw).

Why batched: per step, one log-sum-exp over the asking rows and one top-k with the largest k
among them (in one C pass where the engine runs its C forward), each made into Python lists
once; a row that does not ask costs nothing, and no normalized copy of the logits is made. Prompt
logprobs come from the prefill's logits of every prompt position (executors' `prefill`
with `every_position`), in chunks, so a long prompt never holds two copies of its logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from contracts.logprobs import FLOOR, Candidate, TokenLogprobs
from textgen.core.validation import ValidationError

PROMPT_CHUNK = 512  # prompt positions normalized at a time


def check_prompt_logits(prompt_tokens: int, vocab_size: int, limit_mib: int) -> None:
    """Refuse prompt logprobs whose logits (float32, every position x the vocabulary, held at
    once by the prefill) would pass `limit_mib` (EngineConfig.max_prompt_logits_mib), saying
    how long a prompt may be scored."""
    needed = prompt_tokens * vocab_size * 4
    if needed > limit_mib * 2**20:
        most = limit_mib * 2**20 // (vocab_size * 4)
        raise ValidationError("prompt_logprobs", (
            f"needs the logits of every prompt position: {prompt_tokens} tokens x "
            f"{vocab_size} = {needed / 2**20:,.0f} MiB, over this server's "
            f"max_prompt_logits_mib ({limit_mib:,}); score at most {most} tokens per "
            "request"))


@dataclass
class Scores:
    """What a step's logprobs need from its logits, taken before sampling, which may change
    them in place (logit_bias, penalties, a banned EOS): each row's log-sum-exp and its best
    tokens; the chosen token's entry comes after sampling (`records`)."""

    logits: torch.Tensor  # the asking rows' raw logits, a copy where sampling reshapes them
    lse: torch.Tensor     # [rows]
    best_ids: list[list[int]]
    best_values: list[list[float]]  # log-probabilities, best first
    top: Sequence[int]    # how many best tokens each row asked for


# Native = kernel.logprob_pass's signature: (logits [rows, vocab], k) -> (lse, ids, values).
Native = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def score(logits: torch.Tensor, asking: Sequence[int], top: Sequence[int],
          reshaped: Sequence[bool], native: Optional[Native] = None) -> Scores:
    """The `asking` rows of a step's raw `logits` ([rows, vocab]), each wanting its `top`
    best tokens; `reshaped[i]`: sampling will change row asking[i] in place. `native`: the C
    pass (one read of each row for its maximum, one for its sum, one for its best), else
    torch's log-sum-exp and top-k; neither writes a normalized copy of the logits."""
    rows = logits.float()
    if len(asking) < rows.shape[0]:
        rows = rows[list(asking)]  # a copy: sampling cannot reach it
    elif any(reshaped):
        rows = rows.clone()
    k = max(top, default=0)
    if native is not None and rows.device.type == "cpu":
        lse, ids, values = native(rows, k)
    else:
        lse = torch.logsumexp(rows, dim=-1)
        found = torch.topk(rows, k, dim=-1) if k else None
        ids = found.indices if found is not None else torch.empty((len(asking), 0))
        values = found.values - lse.unsqueeze(1) if found is not None else ids.float()
    return Scores(rows, lse, ids.tolist(), values.clamp(min=FLOOR).tolist(), top)


def records(scores: Scores, chosen: Sequence[int], texts: Sequence[str]
            ) -> list[TokenLogprobs]:
    """Per row of `scores`: the chosen token's entry and the row's `top` best, best first.
    `texts[id]`: a token's text (tokenization.TokenTexts)."""
    index = torch.tensor(chosen, dtype=torch.long, device=scores.logits.device).unsqueeze(1)
    values = (scores.logits.gather(1, index).squeeze(1) - scores.lse).clamp_(min=FLOOR).tolist()
    text = texts.__getitem__
    return [TokenLogprobs(Candidate(token, text(token), value),
                          tuple(map(Candidate, ids[:n], map(text, ids[:n]), vals[:n])))
            for token, value, n, ids, vals in zip(chosen, values, scores.top,
                                                  scores.best_ids, scores.best_values)]


def prompt_records(logits: torch.Tensor, prompt_ids: Sequence[int], top: int,
                   texts: Sequence[str]) -> tuple[Optional[TokenLogprobs], ...]:
    """Each prompt token's entry from the logits after every prompt position ([len, vocab]):
    position t is predicted by the logits after t - 1; nothing predicts the first."""
    out: list[Optional[TokenLogprobs]] = [None]
    for start in range(0, len(prompt_ids) - 1, PROMPT_CHUNK):
        end = min(start + PROMPT_CHUNK, len(prompt_ids) - 1)
        chunk = range(end - start)
        out += records(score(logits[start:end], chunk, [top] * len(chunk), [False] * len(chunk)),
                       prompt_ids[start + 1:end + 1], texts)
    return tuple(out)
