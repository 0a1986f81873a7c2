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

import numpy as np
import torch

from textgen.core.validation import GenerationRequest


class RowControls:
    """A request's logit_bias and penalties as arrays, made once at submit, and, for penalties,
    what the sequence has seen, sparsely: each distinct token of its prompt and output once
    (`ids`) and what the presence and frequency penalties take off each (`subtract`).

    Why sparse: a penalty touches only seen tokens, a few hundred of a vocabulary of tens of
    thousands, so a step gathers and scatters those instead of passing over [rows, vocab],
    which cost far more than the target (docs/performance.md, Sampling controls). Why numpy,
    with room for every new token: `add` runs per token on the engine thread, and a step
    concatenates the batch's arrays at a fraction of torch's per-call cost at this size."""

    def __init__(self, request: GenerationRequest, prompt_ids: Sequence[int]) -> None:
        bias = request.logit_bias
        self.bias_ids = np.array([token for token, _ in bias], dtype=np.int64)
        self.bias_values = np.array([value for _, value in bias], dtype=np.float32)
        self.penalized = request.penalized
        # A seen token's logit is multiplied by 1 / repetition when positive, by repetition
        # when not (vLLM's rule), then lowered by its `subtract`.
        self.scale = np.array([1 / request.repetition_penalty, request.repetition_penalty],
                              dtype=np.float32)
        self._frequency = request.frequency_penalty
        self._presence = request.presence_penalty
        unique = list(dict.fromkeys(prompt_ids)) if self.penalized else []
        self._slot = {token: slot for slot, token in enumerate(unique)}
        capacity = len(unique) + request.max_tokens if self.penalized else 0
        self.ids = np.empty(capacity, dtype=np.int64)
        self.ids[:len(unique)] = unique
        self._counts = [0] * capacity
        # presence + frequency x count for each seen token, kept as tokens arrive
        self.subtract = np.zeros(capacity, dtype=np.float32)
        self.size = len(unique)

    def add(self, token_id: int) -> None:
        """Count a generated token; only penalties need the count."""
        if not self.penalized:
            return
        slot = self._slot.get(token_id)
        if slot is None:
            slot = self._slot[token_id] = self.size
            self.ids[slot] = token_id
            self.size += 1
        self._counts[slot] += 1
        self.subtract[slot] = self._presence + self._frequency * self._counts[slot]


def make_controls(request: GenerationRequest,
                  prompt_ids: Sequence[int]) -> Optional[RowControls]:
    """The record a request with a logit_bias or penalties needs; other requests need none."""
    if request.reshapes_logits:
        return RowControls(request, prompt_ids)
    return None


def apply_controls(logits: torch.Tensor, requests: Sequence[GenerationRequest],
                   generated: Sequence[int], controls: Sequence[Optional[RowControls]],
                   eos_token_id: Optional[int]) -> None:
    """Apply each row's logit_bias, min_tokens and penalties to `logits` ([rows, vocab]) in
    place; rows that set none are not touched."""
    device = logits.device

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(device)

    rows = [row for row, record in enumerate(controls) if record is not None]
    if len(rows) != sum(1 for r in requests if r.reshapes_logits):
        raise ValueError("every row with logit_bias or penalties needs its record "
                         "(make_controls)")
    records: list[RowControls] = [controls[row] for row in rows]  # type: ignore[misc]
    biased = [(row, r) for row, r in zip(rows, records) if len(r.bias_ids)]
    if biased:  # one scatter for the whole batch: a per-row update costs as much as a step
        where = (tensor(np.repeat(np.array([row for row, _ in biased], dtype=np.int64),
                                  [len(r.bias_ids) for _, r in biased])),
                 tensor(np.concatenate([r.bias_ids for _, r in biased])))
        logits.index_put_(where, tensor(np.concatenate([r.bias_values for _, r in biased]))
                          .to(logits.dtype), accumulate=True)
    if eos_token_id is not None:
        early = [row for row, request in enumerate(requests)
                 if generated[row] < request.min_tokens]
        if early:
            logits[early, eos_token_id] = float("-inf")
    penalized = [(row, r) for row, r in zip(rows, records) if r.penalized]
    if not penalized:
        return
    sizes = [r.size for _, r in penalized]
    where = (tensor(np.repeat(np.array([row for row, _ in penalized], dtype=np.int64), sizes)),
             tensor(np.concatenate([r.ids[:r.size] for _, r in penalized])))
    scale = np.repeat(np.stack([r.scale for _, r in penalized]), sizes, axis=0)
    values = logits[where].float().cpu().numpy()
    values *= np.where(values > 0, scale[:, 0], scale[:, 1])
    values -= np.concatenate([r.subtract[:r.size] for _, r in penalized])
    logits.index_put_(where, torch.from_numpy(values).to(device=device, dtype=logits.dtype))


def make_rng(request: GenerationRequest, index: int = 0) -> Optional[random.Random]:
    """A private random stream for sequence `index` of a sampled request (a seeded one's
    sequence i draws from seed + i, so each is reproducible alone); greedy ones need none."""
    if request.greedy:
        return None
    if request.seed is None:
        return random.Random(secrets.randbits(63))
    return random.Random((request.seed + index) % 2**63)


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
                       controls: Optional[Sequence[Optional[RowControls]]] = None) -> list[int]:
    """Next token per row of `logits` ([rows, vocab]), following each row's own request.
    `generated` (tokens each row has produced) and `controls` (make_controls) serve
    `apply_controls`; without them no row may set logit_bias, min_tokens or penalties."""
    logits = logits.float()
    if any(r.reshapes_logits or r.min_tokens for r in requests):
        if generated is None or controls is None:
            raise ValueError("rows with logit_bias, min_tokens or penalties need `generated` "
                             "and `controls`")
        apply_controls(logits, requests, generated, controls, eos_token_id)
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
