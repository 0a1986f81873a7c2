"""Decide, between decode steps, which waiting sequences join the running batch.

NOTE on the algorithm: requests wait in FIFO order. Before every decode step the engine calls
`schedule()`, which admits waiting sequences in order while the running batch stays within
`max_num_seqs` sequences and `max_batch_total_tokens` tokens. Tokens are counted as the
batch's cache holds them: every row padded to the longest, so the running rows times the
largest worst case among them (prompt + max_tokens, as TGI counts a sequence, so an admitted
sequence is never evicted). However lengths mix, the cache then stays within the budget
(KVBatch adds at most HEADROOM columns a row): one long request does not make 31 short ones
each reserve its length.
The first waiting sequence that does not fit blocks the ones behind it, so a long request is
never starved by short ones. With policy `static` nothing joins until the running batch has
drained completely: that is one `generate()` per batch, kept for comparison.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Generic, Iterable, Optional, Protocol, TypeVar


@dataclass(frozen=True)
class Budget:
    max_num_seqs: int
    max_batch_total_tokens: int
    static: bool = False


class Budgeted(Protocol):
    """What the scheduler needs from a sequence: its worst-case token footprint, and the rows
    it takes when it joins (a request's n sequences are admitted together)."""

    @property
    def token_budget(self) -> int: ...

    @property
    def width(self) -> int: ...


S = TypeVar("S", bound=Budgeted)


class Scheduler(Generic[S]):
    """Where every sequence of the engine is, in one place: waiting in the queue, admitted and
    waiting for its prefill, or in the batch (`rows`, in the executor's row order). The engine
    thread moves sequences between them; other threads read them under the engine's lock."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.waiting: deque[S] = deque()
        self.admitted: list[S] = []  # oldest first; prefilled a share per step
        self.rows: list[S] = []      # row i of the executor's batch is rows[i]

    @property
    def running(self) -> list[S]:
        """The sequences the budget counts: in the batch or about to join it."""
        return self.rows + self.admitted

    def add(self, seq: S) -> None:
        """Called from any thread (under the engine's lock) when a request arrives."""
        self.waiting.append(seq)

    @staticmethod
    def rows_of(seqs: Iterable[S]) -> int:
        """The batch rows `seqs` take (each sequence with its forks)."""
        return sum(s.width for s in seqs)

    @staticmethod
    def footprint(rows: int, longest: int) -> int:
        """Cache tokens `rows` rows reserve when the largest worst case among them is
        `longest`: each row padded to it."""
        return rows * longest

    @property
    def token_usage(self) -> float:
        """The share of max_batch_total_tokens the running sequences reserve (0-1)."""
        longest = max((s.token_budget for s in self.running), default=0)
        return self.footprint(self.rows_of(self.running), longest) / \
            self.budget.max_batch_total_tokens

    def fits_ever(self, seq: S) -> bool:
        """Whether the sequence (with its forks) could run in an otherwise empty batch."""
        return self.footprint(seq.width, seq.token_budget) <= self.budget.max_batch_total_tokens

    def schedule(self, hold: Optional[Callable[[S], bool]] = None) -> list[S]:
        """Called before each step; admits waiting sequences that fit and returns them.
        `hold(seq)`: takes what else the sequence needs to run (its LoRA adapter), False when
        it cannot now; it then waits, and the ones behind it too (FIFO)."""
        running = self.running
        if self.budget.static and running:
            return []
        admitted: list[S] = []
        longest = max((s.token_budget for s in running), default=0)
        rows = self.rows_of(running)
        while self.waiting:
            seq = self.waiting[0]
            if rows + seq.width > self.budget.max_num_seqs:
                break
            widest = max(longest, seq.token_budget)
            if self.footprint(rows + seq.width, widest) > self.budget.max_batch_total_tokens:
                break
            if hold is not None and not hold(seq):
                break
            self.waiting.popleft()
            longest = widest
            rows += seq.width
            admitted.append(seq)
        self.admitted.extend(admitted)
        return admitted

    def join_batch(self, group: list[S]) -> range:
        """Admitted sequences just prefilled: the executor appended them as its last rows."""
        joined = set(map(id, group))
        self.admitted = [s for s in self.admitted if id(s) not in joined]
        first = len(self.rows)
        self.rows.extend(group)
        return range(first, len(self.rows))

    def finish(self, finished: Iterable[S], kept_rows: Optional[list[int]] = None) -> None:
        """Called after a step with the sequences that ended; frees their budget at once.
        `kept_rows`: the executor's new row order after it dropped theirs (old row numbers)."""
        done = set(map(id, finished))
        if kept_rows is not None:  # the executor's order already leaves theirs out
            self.rows = [self.rows[r] for r in kept_rows]
        elif done:
            self.rows = [s for s in self.rows if id(s) not in done]
        if done:
            self.admitted = [s for s in self.admitted if id(s) not in done]

    def drop_waiting(self, dropped: Iterable[S]) -> None:
        """Remove sequences that left before running (cancelled or timed out in the queue)."""
        gone = set(map(id, dropped))
        self.waiting = deque(s for s in self.waiting if id(s) not in gone)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)


def prefill_share(pending: list[S], length: Callable[[S], int], max_tokens: int) -> list[S]:
    """The oldest of `pending` (admitted, not yet prefilled) whose prompts add up to at most
    `max_tokens` (EngineConfig.max_prefill_tokens), and always the oldest one: what one step
    prefills. Oldest first, so a long prompt is never passed over by shorter newcomers."""
    share, tokens = [], 0
    for seq in pending:
        tokens += length(seq)
        if share and tokens > max_tokens:
            break
        share.append(seq)
    return share


def prefill_groups(admitted: list[S], length: Callable[[S], int], max_tokens: int,
                   max_padding: float = 0.25) -> list[list[S]]:
    """Split the sequences admitted in one step into prefill passes, shortest prompts first.

    Why: one pass left-pads every prompt to the longest, so eight arrivals with one 384-token
    prompt among them cost 8 x 384 tokens of forward pass, and every one of them waits for it
    (as the first wave of a mixed workload did: docs/performance.md, Figures behind design
    choices). A group only grows while its padding stays within `max_padding` of its real
    tokens and its padded size within `max_tokens` (EngineConfig.max_prefill_tokens); short
    prompts go first and stream sooner.
    """
    groups: list[list[S]] = []
    real = 0
    for seq in sorted(admitted, key=length):
        size = length(seq)
        group = groups[-1] if groups else None
        padded = size * (len(group) + 1) if group is not None else size
        if group is not None and padded <= (1 + max_padding) * (real + size) \
                and padded <= max_tokens:
            group.append(seq)
            real += size
        else:
            groups.append([seq])
            real = size
    return groups
