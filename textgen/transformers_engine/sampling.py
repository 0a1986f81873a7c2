"""Choose each row's next token with that row's own sampling parameters, in batched passes.

Why batched: with a full batch of running rows a per-row softmax + `torch.multinomial` cost more
than the model's own decode step on the CPU (docs/performance.md, Figures behind design
choices). Here temperature, top-k and top-p are applied to all sampled rows at once (one pass
for rows with a top-k/top-p cut, one for the rest) and each row draws by inverting its
cumulative distribution.

Why each sequence owns a `random.Random`: requests batched together must never share
randomness. A row's draw is one uniform number from its own seeded stream, so a seeded request
gives the same text whatever else is in the batch (and on any device: the number is drawn on
the host, only the distribution lives on the device).
"""

from __future__ import annotations

import random
import secrets
from typing import Optional, Sequence

import torch

from textgen.core.validation import GenerationRequest


def make_rng(request: GenerationRequest) -> Optional[random.Random]:
    """A private random stream for a sampled request; greedy requests need none."""
    if request.greedy:
        return None
    return random.Random(request.seed if request.seed is not None else secrets.randbits(63))


def filter_top_k_top_p(sorted_logits: torch.Tensor, top_k: torch.Tensor,
                       top_p: torch.Tensor) -> torch.Tensor:
    """Mask (to -inf) what each row's top-k and nucleus cut away.

    `sorted_logits` is [rows, vocab] in descending order; `top_k` ([rows], 0 = no cut) and
    `top_p` ([rows], 1.0 = no cut) are per row. The best token always stays.
    """
    vocab = sorted_logits.shape[-1]
    rank = torch.arange(vocab, device=sorted_logits.device).expand_as(sorted_logits)
    k = torch.where(top_k > 0, top_k, vocab).unsqueeze(1)
    sorted_logits = sorted_logits.masked_fill(rank >= k, float("-inf"))
    probs = torch.softmax(sorted_logits, dim=-1)
    # Drop a token when the mass before it already reaches top_p.
    mass_before = probs.cumsum(dim=-1) - probs
    return sorted_logits.masked_fill(mass_before >= top_p.unsqueeze(1), float("-inf"))


def sample_next_tokens(logits: torch.Tensor, requests: Sequence[GenerationRequest],
                       rngs: Sequence[Optional[random.Random]],
                       eos_token_id: Optional[int]) -> list[int]:
    """Next token per row of `logits` ([rows, vocab]), following each row's own request."""
    logits = logits.float()
    if eos_token_id is not None:
        banned = [row for row, request in enumerate(requests) if request.ignore_eos]
        if banned:
            logits[banned, eos_token_id] = float("-inf")
    greedy = [row for row, request in enumerate(requests) if request.greedy]
    if len(greedy) == len(requests):
        return torch.argmax(logits, dim=-1).tolist()
    # Only the greedy rows' argmax: over a 32 x 4096 batch it costs as much as a softmax.
    chosen = [0] * len(requests)
    if greedy:
        for row, token in zip(greedy, torch.argmax(logits[greedy], dim=-1).tolist()):
            chosen[row] = token
    sampled = [row for row, request in enumerate(requests) if not request.greedy]

    draws = {}
    for row in sampled:
        rng = rngs[row]
        if rng is None:
            raise ValueError("every sampled row needs its random stream (make_rng)")
        draws[row] = rng.random()
    # Rows with a top-k/top-p cut draw in sorted order, the others in vocabulary order: two
    # groups, so that a row's token depends only on its own parameters and draw.
    for cut in (False, True):
        rows = [row for row in sampled if _has_cut(requests[row]) == cut]
        if rows:
            # All rows (in order) need no copy of the batch's logits.
            group = logits if len(rows) == len(requests) else logits[rows]
            found = _draw(group, [requests[row] for row in rows],
                          [draws[row] for row in rows], cut)
            for row, token in zip(rows, found):
                chosen[row] = token
    return chosen


def _has_cut(request: GenerationRequest) -> bool:
    return request.top_k > 0 or request.top_p < 1.0


def _draw(logits: torch.Tensor, requests: Sequence[GenerationRequest], draws: Sequence[float],
          cut: bool) -> list[int]:
    """One token per row by inverting the row's cumulative distribution at its draw."""
    device = logits.device
    scaled = logits / torch.tensor([r.temperature for r in requests], device=device).unsqueeze(1)
    order: Optional[torch.Tensor] = None
    if cut:
        scaled, order = torch.sort(scaled, dim=-1, descending=True)
        scaled = filter_top_k_top_p(
            scaled, torch.tensor([r.top_k for r in requests], device=device),
            torch.tensor([r.top_p for r in requests], device=device))
    cdf = torch.softmax(scaled, dim=-1).cumsum(dim=-1)
    uniform = torch.tensor(draws, device=device, dtype=cdf.dtype).unsqueeze(1)
    # The first token whose cumulative mass exceeds the draw; clamped against rounding at 1.0.
    index = torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True).clamp_(max=cdf.shape[1] - 1)
    tokens = order.gather(1, index) if order is not None else index
    return tokens.squeeze(1).tolist()
