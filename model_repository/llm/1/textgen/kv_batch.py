"""The running batch's key/value cache: left-padded rows that can be joined and dropped.

Why left padding: every row's next token sits in the last column, so one forward pass decodes
all rows at once. Rows that join are prefilled on their own and then concatenated after padding
both sides to the same length; rows that finish are removed by index, and columns that have
become padding for every row are trimmed so the cache never grows for nobody.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from transformers import DynamicCache


def _pad_left(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class KVBatch:
    """Cache tensors ([rows, heads, length, head_dim] per layer) plus the attention mask."""

    def __init__(self, cache: Any, attention_mask: torch.Tensor) -> None:
        self.cache = cache
        self.attention_mask = attention_mask  # [rows, length], 1 for real tokens

    @property
    def rows(self) -> int:
        return self.attention_mask.shape[0]

    def decode_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention mask and position ids for one more token per row."""
        mask = torch.cat([self.attention_mask, self.attention_mask.new_ones(self.rows, 1)], 1)
        positions = self.attention_mask.sum(dim=1, keepdim=True)
        return mask, positions

    def commit_decode(self, mask: torch.Tensor) -> None:
        self.attention_mask = mask

    def join(self, other: "KVBatch") -> None:
        """Append `other`'s rows below ours."""
        length = max(self.attention_mask.shape[1], other.attention_mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_pad_left(mine.keys, length, 2),
                                   _pad_left(theirs.keys, length, 2)], 0)
            mine.values = torch.cat([_pad_left(mine.values, length, 2),
                                     _pad_left(theirs.values, length, 2)], 0)
        self.attention_mask = torch.cat([_pad_left(self.attention_mask, length, 1),
                                         _pad_left(other.attention_mask, length, 1)], 0)

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order) and trim columns that are padding in all of them."""
        index = torch.tensor(rows, dtype=torch.long, device=self.attention_mask.device)
        mask = self.attention_mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else mask.shape[1]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:, :]
            layer.values = layer.values.index_select(0, index)[:, :, start:, :]
        self.attention_mask = mask[:, start:]


def prefill_inputs(prompts: list[list[int]], pad_id: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded input ids, attention mask and position ids for a group of new prompts."""
    length = max(map(len, prompts))
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, length - len(prompt):] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def new_cache(model_config: Optional[Any] = None) -> Any:
    return DynamicCache(config=model_config) if model_config is not None else DynamicCache()
