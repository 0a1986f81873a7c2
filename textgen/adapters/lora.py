"""The low-rank products of one forward pass whose rows use different adapters.

A batch row may run the base model or any adapter. Every row shares the base model's matrix
products; each adapter then adds `B (A x)` to its own rows only: the rows are grouped by
adapter once per step (`StepLora.of`), and each group costs two thin products per adapted
layer, gathered from and added back to its rows (as Punica's and S-LoRA's grouped kernels
do, here with torch's `index_select` / `index_add_`). Rows without an adapter cost nothing,
and a step with no adapter rows is the base forward, untouched.

Two executors call it: the Llama executor's tensor forward, whose q/k/v and gate/up
projections are fused (`FusedLayout`: an adapter's A matrices stacked, its B matrices placed
block-diagonally, so a fused projection is still two products per adapter), and the Hugging
Face module, whose linear layers are wrapped by `LoraLinear`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from textgen.adapters.peft_format import LoraAdapter

# A fused projection: its parts in output order, as (module name, output features).
FusedLayout = Mapping[Any, Sequence[tuple[str, int]]]
Product = Optional[tuple[torch.Tensor, torch.Tensor]]


def fuse(adapter: LoraAdapter, parts: Sequence[tuple[str, int]]) -> Product:
    """One (A, B) computing the adapter's products of several modules of the same input at
    once: A stacks their A matrices, B places their B matrices on the diagonal (zero rows where
    the adapter leaves a part alone). None when it adapts none of them."""
    present = [(i, adapter.weights[name]) for i, (name, _) in enumerate(parts)
               if name in adapter.weights]
    if not present:
        return None
    offsets = [0]
    for _, rows in parts:
        offsets.append(offsets[-1] + rows)
    a = torch.cat([pair[0] for _, pair in present])
    b = a.new_zeros((offsets[-1], a.shape[0]))
    column = 0
    for i, (_, up) in present:
        b[offsets[i]:offsets[i + 1], column:column + up.shape[1]] = up
        column += up.shape[1]
    return a, b


class StepLora:
    """The adapters of one forward's rows, grouped: each adapter with the rows it serves
    (None: all of them)."""

    def __init__(self, groups: list[tuple[LoraAdapter, Optional[torch.Tensor]]],
                 layout: FusedLayout) -> None:
        self.groups = groups
        self._layout = layout

    @staticmethod
    def of(adapters: Sequence[Optional[LoraAdapter]], device: torch.device,
           layout: Optional[FusedLayout] = None) -> Optional["StepLora"]:
        """The grouping of `adapters` (one per row, None: the base model), or None when no
        row has one."""
        rows: dict[int, tuple[LoraAdapter, list[int]]] = {}
        for row, adapter in enumerate(adapters):
            if adapter is not None:
                rows.setdefault(id(adapter), (adapter, []))[1].append(row)
        if not rows:
            return None
        groups = [(adapter, None if len(members) == len(adapters)
                   else torch.tensor(members, device=device))
                  for adapter, members in rows.values()]
        return StepLora(groups, layout or {})

    def product(self, adapter: LoraAdapter, key: Any) -> Product:
        """The adapter's (A, B) for a module name or a fused projection's key."""
        parts = self._layout.get(key)
        if parts is None:
            return adapter.weights.get(key)
        if key not in adapter.fused:
            adapter.fused[key] = fuse(adapter, parts)
        return adapter.fused[key]

    def add(self, out: torch.Tensor, x: torch.Tensor, key: Any) -> None:
        """Add each adapter's `B A x` to its rows of `out` (rows on dimension 0), in place."""
        for adapter, rows in self.groups:
            pair = self.product(adapter, key)
            if pair is None:
                continue
            a, b = pair
            if rows is None:
                out += F.linear(F.linear(x, a), b)
            else:
                out.index_add_(0, rows, F.linear(F.linear(x.index_select(0, rows), a), b))


class ActiveLora:
    """The grouping of the forward in progress, read by the `LoraLinear` layers."""

    def __init__(self) -> None:
        self.step: Optional[StepLora] = None

    @contextlib.contextmanager
    def using(self, step: Optional[StepLora]) -> Iterator[None]:
        self.step = step
        try:
            yield
        finally:
            self.step = None


class LoraLinear(torch.nn.Module):
    """A Hugging Face module's linear layer plus the adapters of the rows that use one."""

    def __init__(self, base: torch.nn.Linear, name: str, active: ActiveLora) -> None:
        super().__init__()
        self.base = base
        self.name = name
        self.active = active
        self.in_features, self.out_features = base.in_features, base.out_features

    @property
    def weight(self) -> torch.Tensor:  # what transformers reads off a linear layer (dtype...)
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.active.step is not None:
            self.active.step.add(out, x, self.name)
        return out


def wrap_linears(model: Any, names: Sequence[str], active: ActiveLora) -> None:
    """Replace the model's linear layers `names` (peft_format.base_linears) by `LoraLinear`."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoraLinear(getattr(parent, child), name, active))
