"""Admission rules of the iteration-level scheduler."""

from __future__ import annotations

from dataclasses import dataclass

from textgen.transformers_engine.scheduler import Budget, Scheduler, prefill_groups, prefill_share


@dataclass(eq=False)
class Seq:  # a Budgeted sequence
    tokens: int
    width: int = 1  # with its forks (a request's n sequences)

    @property
    def token_budget(self) -> int:
        return self.tokens


def test_waiting_sequences_join_a_running_batch_between_steps():
    scheduler = Scheduler(Budget(max_num_seqs=4, max_batch_total_tokens=100))
    first = Seq(10)
    scheduler.add(first)
    assert scheduler.schedule() == [first]
    second = Seq(10)
    scheduler.add(second)
    assert scheduler.schedule() == [second]
    assert scheduler.running == [first, second]


def test_static_policy_admits_only_into_an_empty_batch():
    scheduler = Scheduler(Budget(4, 100, static=True))
    a, b = Seq(10), Seq(10)
    scheduler.add(a)
    assert scheduler.schedule() == [a]
    scheduler.add(b)
    assert scheduler.schedule() == []
    scheduler.finish([a])
    assert scheduler.schedule() == [b]


def test_sequence_count_limit_holds_the_rest_in_fifo_order():
    scheduler = Scheduler(Budget(2, 1000))
    seqs = [Seq(1) for _ in range(4)]
    for seq in seqs:
        scheduler.add(seq)
    assert scheduler.schedule() == seqs[:2]
    scheduler.finish([seqs[0]])
    assert scheduler.schedule() == [seqs[2]]
    assert list(scheduler.waiting) == [seqs[3]]


def test_token_budget_blocks_a_large_request_without_letting_small_ones_overtake():
    scheduler = Scheduler(Budget(10, 100))
    big, large, small = Seq(60), Seq(50), Seq(5)
    for seq in (big, large, small):
        scheduler.add(seq)
    assert scheduler.schedule() == [big]
    scheduler.finish([big])
    assert scheduler.schedule() == [large, small]


def test_finishing_frees_budget_and_dropping_removes_from_the_queue():
    scheduler = Scheduler(Budget(1, 100))
    a, b, c = Seq(10), Seq(10), Seq(10)
    for seq in (a, b, c):
        scheduler.add(seq)
    scheduler.schedule()
    scheduler.drop_waiting([b])
    scheduler.finish([a])
    assert scheduler.schedule() == [c]
    scheduler.finish([c])
    assert not scheduler.has_unfinished()


def test_a_sequence_larger_than_the_total_budget_never_fits():
    scheduler = Scheduler(Budget(4, 100))
    assert scheduler.fits_ever(Seq(100)) and not scheduler.fits_ever(Seq(101))


def test_prefill_groups_bound_padding_and_put_short_prompts_first():
    lengths = [384, 40, 100, 10, 12, 36, 390]
    groups = prefill_groups(lengths, length=lambda n: n, max_tokens=4096)
    assert [n for group in groups for n in group] == sorted(lengths)
    for group in groups:  # padded to the longest, within 25% of the real tokens
        assert max(group) * len(group) <= 1.25 * sum(group)
    assert groups[0] == [10, 12] and groups[-1] == [384, 390]


def test_prompts_of_one_length_prefill_in_one_pass_within_the_token_limit():
    assert prefill_groups([64] * 8, length=lambda n: n, max_tokens=512) == [[64] * 8]


def test_arrivals_beyond_the_prefill_token_limit_go_in_further_passes():
    """32 arrivals of 64 tokens with a 512-token limit: four passes of eight, so the first
    eight stream after a quarter of the work instead of all of it."""
    assert prefill_groups([64] * 32, length=lambda n: n, max_tokens=512) == [[64] * 8] * 4
    # A prompt longer than the limit still runs, alone.
    assert prefill_groups([600, 10], length=lambda n: n, max_tokens=512) == [[10], [600]]


def test_a_step_prefills_the_oldest_prompts_within_the_token_limit_and_always_one():
    assert prefill_share([300, 100, 200, 50], length=lambda n: n, max_tokens=512) == [300, 100]
    assert prefill_share([600, 10], length=lambda n: n, max_tokens=512) == [600]  # alone
    assert prefill_share([], length=lambda n: n, max_tokens=512) == []


def test_the_budget_counts_rows_padded_to_the_longest_so_the_cache_stays_within_it():
    """The cache holds every row as wide as the longest: one long request among short ones
    reserves its width for each of them."""
    scheduler = Scheduler(Budget(max_num_seqs=32, max_batch_total_tokens=1000))
    long, shorts = Seq(400), [Seq(10) for _ in range(5)]
    for seq in (long, *shorts):
        scheduler.add(seq)
    assert scheduler.schedule() == [long, shorts[0]]  # 3 rows of 400 would be 1,200
    assert scheduler.token_usage == 0.8
    scheduler.finish([long])
    assert scheduler.schedule() == shorts[1:]
    assert scheduler.token_usage == 5 * 10 / 1000


def test_a_request_of_n_sequences_is_admitted_whole_and_counted_as_n_rows():
    scheduler = Scheduler(Budget(max_num_seqs=4, max_batch_total_tokens=100))
    running, family, single = Seq(20), Seq(20, width=3), Seq(20)
    scheduler.add(running)
    assert scheduler.schedule() == [running]
    scheduler.add(family)
    scheduler.add(single)
    assert scheduler.schedule() == [family]  # 1 + 3 rows: the single one waits its turn
    assert scheduler.token_usage == 0.8      # 4 rows x 20 tokens of 100
    assert scheduler.fits_ever(Seq(25, width=4)) and not scheduler.fits_ever(Seq(26, width=4))
