"""Choose each row's next token with that row's own sampling parameters, in batched passes.

Why batched: with a full batch of running rows a per-row softmax + `torch.multinomial` cost more
than the model's own decode step on the CPU (docs/performance.md, Figures behind design
choices). Here temperature, top-k and top-p are applied to all sampled rows at once (one pass
for rows with a top-k/top-p cut, one for the rest) and each row draws by inverting its
cumulative distribution.

Before sampling, each row's logits get its request's controls, in vLLM's order: `logit_bias`,
the EOS ban of `min_tokens`, then the repetition penalty (over the prompt and the output) and
the presence and frequency penalties (over the output). Only the rows that ask pay for them.

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


class SeenTokens:
    """What a penalized sequence has seen: its prompt's tokens, and how often it generated each
    token. Kept per sequence and updated a token at a time, so a step never re-counts."""

    def __init__(self, prompt_ids: Sequence[int], vocab_size: int) -> None:
        self.in_prompt = torch.zeros(vocab_size, dtype=torch.bool)
        self.in_prompt[torch.tensor(list(prompt_ids), dtype=torch.long)] = True
        self.counts = torch.zeros(vocab_size, dtype=torch.float32)

    def add(self, token_id: int) -> None:
        self.counts[token_id] += 1


def make_seen(request: GenerationRequest, prompt_ids: Sequence[int],
              vocab_size: int) -> Optional[SeenTokens]:
    """The token record a penalized request needs; other requests need none."""
    return SeenTokens(prompt_ids, vocab_size) if request.penalized else None


def apply_controls(logits: torch.Tensor, requests: Sequence[GenerationRequest],
                   generated: Sequence[int], seen: Sequence[Optional[SeenTokens]],
                   eos_token_id: Optional[int]) -> None:
    """Apply each row's logit_bias, min_tokens and penalties to `logits` ([rows, vocab]) in
    place; rows that set none are not touched."""
    for row, request in enumerate(requests):
        if request.logit_bias:
            ids, biases = zip(*request.logit_bias)
            logits[row, list(ids)] += torch.tensor(biases, device=logits.device)
    if eos_token_id is not None:
        early = [row for row, request in enumerate(requests)
                 if generated[row] < request.min_tokens]
        if early:
            logits[early, eos_token_id] = float("-inf")
    rows = [row for row, request in enumerate(requests) if request.penalized]
    if not rows:
        return
    records = [seen[row] for row in rows]
    if any(record is None for record in records):
        raise ValueError("every penalized row needs its token record (make_seen)")
    device = logits.device
    counts = torch.stack([r.counts for r in records]).to(device)  # type: ignore[union-attr]
    in_prompt = torch.stack([r.in_prompt for r in records]).to(device)  # type: ignore[union-attr]
    group = logits[rows]

    def per_row(name: str) -> torch.Tensor:
        return torch.tensor([getattr(requests[row], name) for row in rows],
                            device=device).unsqueeze(1)

    repetition = per_row("repetition_penalty")
    group = torch.where(in_prompt | (counts > 0),
                        torch.where(group > 0, group / repetition, group * repetition), group)
    group -= per_row("frequency_penalty") * counts + per_row("presence_penalty") * (counts > 0)
    logits[rows] = group


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
                       rngs: Sequence[Optional[random.Random]], eos_token_id: Optional[int],
                       generated: Optional[Sequence[int]] = None,
                       seen: Optional[Sequence[Optional[SeenTokens]]] = None) -> list[int]:
    """Next token per row of `logits` ([rows, vocab]), following each row's own request.
    `generated` (tokens each row has produced) and `seen` (make_seen) serve the controls of
    `apply_controls`; without them none may be set."""
    logits = logits.float()
    if any(r.logit_bias or r.min_tokens or r.penalized for r in requests):
        if generated is None or seen is None:
            raise ValueError("rows with logit_bias, min_tokens or penalties need `generated` "
                             "and `seen`")
        apply_controls(logits, requests, generated, seen, eos_token_id)
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
