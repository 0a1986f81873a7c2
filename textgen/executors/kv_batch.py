"""The running batch's key/value cache: rows that join and leave between decode steps.

Layout: per layer one key and one value buffer of [row capacity, heads, column capacity,
head_dim], allocated once and reused. Live rows are `0..rows-1`, the columns in use
`start..end-1`, and every row is right-aligned at `end` (left padding, masked out), so one
forward pass decodes all rows at once and each step writes one column.

Why this shape: concatenating at each step (transformers' DynamicCache) or re-packing the
whole cache whenever a row joins or leaves copied the entire cache several times per step at
32 rows, more than the attention itself read. Here a decode step writes one column, a joining
row copies only its own prefill into the rows below, and a leaving row is replaced by the last
row (one row copied). The buffers are re-laid out (trimming padding columns) only when the
columns or rows run out, every `HEADROOM` steps at most.

Memory: with `token_limit` (the engine's max_batch_total_tokens) a re-layout keeps only as many
spare rows as fit the limit at the new width, so capacity x columns stays within the limit
plus HEADROOM columns a live row, given what the scheduler admits (live rows x the widest
row's worst case within the limit).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

HEADROOM = 64  # free columns to the right after a re-layout: decode steps before the next


class SlotLayer(DynamicLayer):
    """One layer's view of the batch buffers; the model appends through `update`."""

    def bind(self, key_buffer: torch.Tensor, value_buffer: torch.Tensor, rows: int, start: int,
             end: int) -> None:
        self.is_initialized = True
        self.key_buffer, self.value_buffer = key_buffer, value_buffer
        self._rows, self._start, self._end = rows, start, end
        self.keys = key_buffer[:rows, :, start:end]
        self.values = value_buffer[:rows, :, start:end]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new columns after `end` (room was reserved by `KVBatch.decode_inputs`)."""
        end = self._end + key_states.shape[-2]
        self.key_buffer[:self._rows, :, self._end:end] = key_states
        self.value_buffer[:self._rows, :, self._end:end] = value_states
        self.bind(self.key_buffer, self.value_buffer, self._rows, self._start, end)
        return self.keys, self.values


def new_cache() -> DynamicCache:
    """The cache a group of newcomers is prefilled into before it joins the batch."""
    return DynamicCache()


class KVBatch:
    """The running rows' cache and attention mask."""

    def __init__(self, token_limit: Optional[int] = None) -> None:
        self.token_limit = token_limit
        self.cache: Optional[Cache] = None  # created at the first join
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self._shapes: list[tuple[int, int]] = []  # (heads, head_dim) per layer
        self._mask = torch.zeros((0, 0), dtype=torch.long)  # [row capacity, column capacity]
        self.rows = 0
        self._start = self._end = 0

    def decode_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention mask and position ids for one more token per row."""
        if self._end >= self._mask.shape[1]:
            self._relayout(self.rows, left=0)
        self._mask[:self.rows, self._end] = 1
        positions = self._mask[:self.rows, self._start:self._end].sum(dim=1, keepdim=True)
        return self._mask[:self.rows, self._start:self._end + 1], positions

    def commit_decode(self) -> None:
        """After the forward pass: the layers have written column `end`."""
        self._end += 1

    @property
    def start(self) -> int:
        """First column any live row attends to."""
        return self._start

    @property
    def end(self) -> int:
        """The column the next decode step writes (one past the last written)."""
        return self._end

    def buffers(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer`'s key and value buffers, [row capacity, heads, columns, head_dim]."""
        return self._keys[layer], self._values[layer]

    def all_buffers(self) -> list[torch.Tensor]:
        """Every layer's key then value buffer, in layer order (for the C decode step)."""
        return [buffer for pair in zip(self._keys, self._values) for buffer in pair]

    def join(self, layers: Sequence[tuple[torch.Tensor, torch.Tensor]],
             mask: torch.Tensor) -> None:
        """Add prefilled newcomers below our rows: per layer their keys and values
        ([n, heads, P, head_dim]) and their [n, P] left-padded mask."""
        newcomers, length = mask.shape
        if not self._keys:
            self._allocate(layers, newcomers, length)
        if self.rows + newcomers > self._mask.shape[0] or self._end < length:
            self._relayout(self.rows + newcomers,
                           left=max(0, length - (self._end - self._start)))
        rows = slice(self.rows, self.rows + newcomers)
        first = self._end - length
        for (new_keys, new_values), keys, values in zip(layers, self._keys, self._values):
            keys[rows, :, first:self._end] = new_keys
            values[rows, :, first:self._end] = new_values
        self._mask[rows] = 0
        self._mask[rows, first:self._end] = mask
        self.rows += newcomers
        self._start = min(self._start, first)
        self._bind()

    def fork(self, sources: list[int]) -> None:
        """Add a copy of each of rows `sources` below our rows, in order: the n sequences of
        one request share its prompt's keys and values, computed once."""
        if self.rows + len(sources) > self._mask.shape[0]:
            self._relayout(self.rows + len(sources), left=0)
        columns = slice(self._start, self._end)
        new = slice(self.rows, self.rows + len(sources))
        index = torch.tensor(sources, dtype=torch.long, device=self._mask.device)
        for buffer in (*self._keys, *self._values):
            buffer[new, :, columns] = buffer[index, :, columns]
        self._mask[new, columns] = self._mask[index, columns]
        self.rows += len(sources)
        self._bind()

    def drop(self, finished: list[int]) -> list[int]:
        """Remove the `finished` rows; returns the old row indices in their new order.

        Each removed row is overwritten by the current last row, so only that row moves."""
        order = list(range(self.rows))
        columns = slice(self._start, self._end)
        for row in sorted(finished, reverse=True):
            last = self.rows - 1
            if row != last:
                for buffer in (*self._keys, *self._values):
                    buffer[row, :, columns] = buffer[last, :, columns]
                self._mask[row, columns] = self._mask[last, columns]
                order[row] = order[last]
            order.pop()
            self.rows -= 1
        self._trim()
        self._bind()
        return order

    # ---- layout ------------------------------------------------------------------------

    def _allocate(self, layers: Sequence[tuple[torch.Tensor, torch.Tensor]], rows: int,
                  length: int) -> None:
        """First join: buffers shaped like the prefill's keys and values, sized for its rows."""
        self._keys = [keys.new_zeros(0) for keys, _ in layers]
        self._values = [values.new_zeros(0) for _, values in layers]
        self._mask = torch.zeros((0, 0), dtype=torch.long, device=layers[0][0].device)
        self.cache = Cache(layers=[SlotLayer() for _ in layers])
        self._shapes = [(keys.shape[1], keys.shape[3]) for keys, _ in layers]
        self._relayout(rows, left=length)

    def _relayout(self, rows_needed: int, left: int) -> None:
        """New buffers for at least `rows_needed` rows: `left` free columns, the columns in
        use, then HEADROOM free columns; copies the live rows and drops padding columns. The
        row capacity stays as it was, so joins do not re-lay out each time, unless that
        would hold more than `token_limit` tokens at the new width."""
        self._trim()
        used = self._end - self._start
        columns = left + used + HEADROOM
        row_capacity = max(rows_needed, self._mask.shape[0])
        if self.token_limit is not None:
            row_capacity = max(rows_needed, min(row_capacity, self.token_limit // columns))
        old = slice(self._start, self._end)
        new = slice(left, left + used)
        for buffers in (self._keys, self._values):
            for i, ((heads, dim), buffer) in enumerate(zip(self._shapes, buffers)):
                grown = buffer.new_zeros((row_capacity, heads, columns, dim))
                if self.rows:
                    grown[:self.rows, :, new] = buffer[:self.rows, :, old]
                buffers[i] = grown
        mask = self._mask.new_zeros((row_capacity, columns))
        mask[:self.rows, new] = self._mask[:self.rows, old]
        self._mask = mask
        self._start, self._end = left, left + used
        self._bind()

    def _trim(self) -> None:
        """Move `start` past the columns that are padding in every live row."""
        if self.rows == 0:
            # An empty batch: keep the buffers, leave room for the next prefill on the left.
            self._start = self._end = max(0, self._mask.shape[1] - HEADROOM)
            return
        used = self._mask[:self.rows, self._start:self._end].any(dim=0).nonzero()
        self._start += int(used[0]) if used.numel() else self._end - self._start

    def _bind(self) -> None:
        if self.cache is not None:
            for layer, keys, values in zip(self.cache.layers, self._keys, self._values):
                layer.bind(keys, values, self.rows, self._start, self._end)


def prefill_mask(prompts: list[list[int]]) -> torch.Tensor:
    """The left-padded attention mask of a group of new prompts, [prompts, longest], on the
    CPU (what `KVBatch.join` takes with their keys and values)."""
    length = max(map(len, prompts))
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        mask[row, length - len(prompt):] = 1
    return mask


def prefill_inputs(prompts: list[list[int]], pad_id: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded input ids, attention mask and position ids for a group of new prompts."""
    mask = prefill_mask(prompts)
    ids = torch.full(mask.shape, pad_id, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, mask.shape[1] - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def prefill_positions(padded: torch.Tensor, prompts: list[list[int]],
                      every_position: Sequence[bool]) -> torch.Tensor:
    """From `padded` ([prompts, longest, ...], left padded as `prefill_inputs` lays them), the
    positions a prefill returns: each prompt's last one, or all of its own where
    `every_position` is set (prompt logprobs), prompt after prompt."""
    if not any(every_position):
        return padded[:, -1]
    longest = padded.shape[1]
    return torch.cat([padded[i, longest - len(p):] if every else padded[i, -1:]
                      for i, (p, every) in enumerate(zip(prompts, every_position))])
