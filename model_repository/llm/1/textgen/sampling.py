"""Choose each row's next token with that row's own sampling parameters.

Why per row: requests batched together must never share parameters or randomness. Each
sampled sequence owns a `torch.Generator` seeded from its request, so a seeded request gives
the same text whatever else is in the batch.
"""

from __future__ import annotations

import secrets
from typing import Optional, Sequence

import torch

from .validation import GenerationRequest


def make_generator(request: GenerationRequest, device: torch.device) -> Optional[torch.Generator]:
    """A private random stream for a sampled request; greedy requests need none."""
    if request.greedy:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(request.seed if request.seed is not None else secrets.randbits(63))
    return generator


def _filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask (to -inf) tokens outside the top-k and outside the nucleus of mass top_p."""
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the mass before it already reaches top_p; the first always stays.
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next_tokens(logits: torch.Tensor, requests: Sequence[GenerationRequest],
                       generators: Sequence[Optional[torch.Generator]],
                       eos_token_id: Optional[int]) -> list[int]:
    """Next token per row of `logits` ([rows, vocab]), following each row's own request."""
    logits = logits.float()
    if eos_token_id is not None:
        for row, request in enumerate(requests):
            if request.ignore_eos:
                logits[row, eos_token_id] = float("-inf")
    chosen = torch.argmax(logits, dim=-1).tolist()
    for row, (request, generator) in enumerate(zip(requests, generators)):
        if request.greedy:
            continue
        row_logits = _filter_top_k_top_p(logits[row] / request.temperature, request.top_k,
                                         request.top_p)
        probs = torch.softmax(row_logits, dim=-1)
        chosen[row] = int(torch.multinomial(probs, 1, generator=generator).item())
    return chosen
