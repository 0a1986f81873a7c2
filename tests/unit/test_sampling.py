"""Per-row sampling: each row follows its own parameters and its own random stream."""

from __future__ import annotations

import torch

from textgen.sampling import _filter_top_k_top_p, make_generator, sample_next_tokens
from textgen.validation import GenerationRequest

CPU = torch.device("cpu")


def test_greedy_rows_take_the_argmax_and_need_no_generator():
    request = GenerationRequest(prompt="x", max_tokens=1)
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 1.0]])
    assert make_generator(request, CPU) is None
    assert sample_next_tokens(logits, [request, request], [None, None], None) == [1, 0]


def test_ignore_eos_never_picks_the_eos_token():
    request = GenerationRequest(prompt="x", max_tokens=1, ignore_eos=True)
    logits = torch.tensor([[0.0, 9.0, 1.0]])
    assert sample_next_tokens(logits, [request], [None], eos_token_id=1) == [2]


def test_same_seed_gives_the_same_tokens_whatever_the_neighbours():
    seeded = GenerationRequest(prompt="x", max_tokens=1, temperature=1.0, seed=42)
    other = GenerationRequest(prompt="x", max_tokens=1, temperature=1.0, seed=1)
    logits = torch.randn(2, 50)

    def draw(requests):
        generators = [make_generator(r, CPU) for r in requests]
        return [sample_next_tokens(logits[:len(requests)], requests, generators, None)
                for _ in range(10)]

    alone = [row[0] for row in draw([seeded])]
    paired = [row[0] for row in draw([seeded, other])]
    assert alone == paired


def test_top_k_keeps_only_the_k_best_tokens():
    logits = torch.tensor([1.0, 4.0, 3.0, 2.0])
    kept = torch.isfinite(_filter_top_k_top_p(logits, top_k=2, top_p=1.0))
    assert kept.tolist() == [False, True, True, False]


def test_top_p_keeps_the_smallest_nucleus_and_always_the_best_token():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    kept = torch.isfinite(_filter_top_k_top_p(logits, top_k=0, top_p=0.8))
    assert kept.tolist() == [True, True, False, False]
    tiny = torch.isfinite(_filter_top_k_top_p(logits, top_k=0, top_p=0.01))
    assert tiny.tolist() == [True, False, False, False]
