"""Log-probabilities for the rows that ask: of each row's token and of the model's most likely
ones, from the raw logits (contracts/logprobs.py says why raw).

Why batched: per step, one log-softmax over the asking rows and one top-k with the largest k
among them, each made into Python lists once; a row that does not ask costs nothing. Prompt
logprobs come from the prefill's logits of every prompt position (executors' `prefill`
with `every_position`), in chunks, so a long prompt never holds two copies of its logits.
"""

from __future__ import annotations

from typing import Optional, Sequence

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


def normalized(logits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities, float32, [rows, vocab]; taken before sampling changes the logits."""
    return torch.log_softmax(logits.float(), dim=-1)


def records(logprobs: torch.Tensor, chosen: Sequence[int], top: Sequence[int],
            texts: Sequence[str]) -> list[TokenLogprobs]:
    """Per row of `logprobs` ([rows, vocab], `normalized`): the chosen token's entry and the
    row's `top` best, best first. `texts[id]`: a token's text (tokenization.TokenTexts)."""
    index = torch.tensor(chosen, dtype=torch.long, device=logprobs.device).unsqueeze(1)
    values = logprobs.gather(1, index).squeeze(1).clamp_(min=FLOOR).tolist()
    k = max(top, default=0)
    best_values: list[list[float]] = [[] for _ in chosen]
    best_ids: list[list[int]] = [[] for _ in chosen]
    if k:
        found = torch.topk(logprobs, k, dim=-1)
        best_values = found.values.clamp_(min=FLOOR).tolist()
        best_ids = found.indices.tolist()

    text = texts.__getitem__
    return [TokenLogprobs(Candidate(token, text(token), value),
                          tuple(map(Candidate, ids[:n], map(text, ids[:n]), vals[:n])))
            for token, value, n, ids, vals in zip(chosen, values, top, best_ids, best_values)]


def prompt_records(logits: torch.Tensor, prompt_ids: Sequence[int], top: int,
                   texts: Sequence[str]) -> tuple[Optional[TokenLogprobs], ...]:
    """Each prompt token's entry from the logits after every prompt position ([len, vocab]):
    position t is predicted by the logits after t - 1; nothing predicts the first."""
    out: list[Optional[TokenLogprobs]] = [None]
    for start in range(0, len(prompt_ids) - 1, PROMPT_CHUNK):
        end = min(start + PROMPT_CHUNK, len(prompt_ids) - 1)
        out += records(normalized(logits[start:end]), prompt_ids[start + 1:end + 1],
                       [top] * (end - start), texts)
    return tuple(out)
