"""Per-row sampling: each row follows its own parameters and its own random stream."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from textgen.core.validation import GenerationRequest
from textgen.transformers_engine.sampling import (apply_controls, filter_top_k_top_p, make_controls,
                                                  make_rng, sample_next_tokens)


def test_greedy_rows_take_the_argmax_and_need_no_random_stream():
    request = GenerationRequest(prompt="x", max_tokens=1)
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 1.0]])
    assert make_rng(request) is None
    assert sample_next_tokens(logits, [request, request], [None, None], None) == [1, 0]


def test_ignore_eos_never_picks_the_eos_token():
    request = GenerationRequest(prompt="x", max_tokens=1, ignore_eos=True)
    logits = torch.tensor([[0.0, 9.0, 1.0]])
    assert sample_next_tokens(logits, [request], [None], eos_token_id=1) == [2]


def test_same_seed_gives_the_same_tokens_whatever_the_neighbours():
    seeded = GenerationRequest(prompt="x", max_tokens=1, temperature=1.0, seed=42)
    other = GenerationRequest(prompt="x", max_tokens=1, temperature=0.5, top_k=3, seed=1)
    greedy = GenerationRequest(prompt="x", max_tokens=1)
    logits = torch.randn(3, 50)

    def draw(requests):
        rngs = [make_rng(r) for r in requests]
        return [sample_next_tokens(logits[:len(requests)], requests, rngs, None)
                for _ in range(10)]

    alone = [row[0] for row in draw([seeded])]
    in_company = [row[0] for row in draw([seeded, other, greedy])]
    assert alone == in_company


def test_draws_follow_the_softmax_distribution_at_the_requested_temperature():
    # Probabilities 0.6 / 0.3 / 0.1 at temperature 1; at temperature 0.5 they sharpen to
    # p^2 / sum(p^2) = 0.783 / 0.196 / 0.022.
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    for temperature, expected in ((1.0, [0.6, 0.3, 0.1]), (0.5, [0.783, 0.196, 0.022])):
        request = GenerationRequest(prompt="x", max_tokens=1, temperature=temperature)
        rng = random.Random(7)
        counts = Counter(sample_next_tokens(logits, [request], [rng], None)[0]
                         for _ in range(4000))
        for token, probability in enumerate(expected):
            assert abs(counts[token] / 4000 - probability) < 0.03, (temperature, counts)


def test_top_k_keeps_only_the_k_best_tokens():
    sorted_logits = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    kept = torch.isfinite(filter_top_k_top_p(sorted_logits, torch.tensor([2]),
                                             torch.tensor([1.0])))
    assert kept.tolist() == [[True, True, False, False]]


def test_top_p_keeps_the_smallest_nucleus_and_always_the_best_token():
    sorted_logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(filter_top_k_top_p(sorted_logits, torch.tensor([0, 0]),
                                             torch.tensor([0.8, 0.01])))
    assert kept.tolist() == [[True, True, False, False], [True, False, False, False]]


def test_sampled_tokens_stay_inside_each_rows_own_cut():
    logits = torch.randn(2, 100)
    top2 = GenerationRequest(prompt="x", max_tokens=1, temperature=2.0, top_k=2, seed=3)
    free = GenerationRequest(prompt="x", max_tokens=1, temperature=2.0, seed=4)
    best_two = set(torch.topk(logits[0], 2).indices.tolist())
    rngs = [make_rng(top2), make_rng(free)]
    seen_free = set()
    for _ in range(200):
        first, second = sample_next_tokens(logits, [top2, free], rngs, None)
        assert first in best_two
        seen_free.add(second)
    assert len(seen_free) > 2  # the uncut neighbour really samples from the whole vocabulary


def _controls(**fields) -> GenerationRequest:
    return GenerationRequest(prompt="x", max_tokens=8, **fields)


def test_logit_bias_can_force_or_ban_a_token_for_its_own_row_only():
    logits = torch.tensor([[0.0, 3.0, 1.0, 0.5]] * 3)
    rows = [_controls(logit_bias=((2, 100.0),)), _controls(logit_bias=((1, -100.0),)),
            _controls()]
    records = [make_controls(row, [0]) for row in rows]
    assert records[2] is None  # a request without controls keeps no record
    assert sample_next_tokens(logits, rows, [None] * 3, None, [0] * 3, records) == [2, 2, 1]


def test_min_tokens_bans_eos_until_that_many_tokens_were_generated():
    logits = torch.tensor([[0.0, 9.0, 1.0]] * 2)
    request = _controls(min_tokens=3)
    assert sample_next_tokens(logits.clone(), [request] * 2, [None] * 2, 1, [2, 3],
                              [None] * 2) == [2, 1]


def test_penalties_follow_vllm_repetition_then_frequency_and_presence():
    prompt = [0]
    request = _controls(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)
    record = make_controls(request, prompt)
    for token in (3, 3, 4):
        record.add(token)
    logits = torch.tensor([[4.0, 4.0, -4.0, 4.0, -4.0]])
    apply_controls(logits, [request], [3], [record], eos_token_id=None)
    # token 0: in the prompt, positive: 4 / 2; token 1: unseen; token 2: unseen, negative;
    # token 3: generated twice: 4 / 2 - 0.5 * 2 - 0.25; token 4: once, negative: -4 * 2 - 0.75.
    assert logits.tolist() == [[2.0, 4.0, -4.0, 0.75, -8.75]]


def test_a_penalized_row_changes_nothing_for_its_neighbours():
    plain = _controls()
    penalized = _controls(presence_penalty=2.0, frequency_penalty=1.0)  # token 1: 3 - 3
    record = make_controls(penalized, [1])
    record.add(1)
    logits = torch.tensor([[0.0, 3.0, 1.0], [0.0, 3.0, 1.0]])
    assert sample_next_tokens(logits, [plain, penalized], [None, None], None, [1, 1],
                              [None, record]) == [1, 2]
    assert make_controls(plain, [1]) is None  # requests without penalties keep no record


def test_controls_without_the_rows_history_are_refused_not_ignored():
    with pytest.raises(ValueError, match="need `generated` and `controls`"):
        sample_next_tokens(torch.zeros(1, 3), [_controls(min_tokens=1)], [None], 0)
