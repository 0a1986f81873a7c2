"""The low-rank products of one forward pass whose rows use different adapters.

A batch row may run the base model or any adapter. Every row shares the base model's matrix
products; each adapter then adds `B (A x)` to its own rows only, as Punica's and S-LoRA's
batched kernels do: once per step `StepLora.of` finds each row's adapter, and each adapted
projection then costs four tensor operations whatever the mix (`StepLora` says how). A
step with no adapter rows is the base forward, untouched.

Two executors call it: the Llama executor's tensor forward, whose q/k/v and gate/up
projections are fused (`FusedLayout`: an adapter's A matrices stacked, its B matrices placed
block-diagonally, so a fused projection is still two products per adapter), and the Hugging
Face module, whose linear layers are wrapped by `LoraLinear`.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

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
    """The adapters of one forward's rows, and how their products are added.

    One adapter on every row: its two products on the whole batch. Several (or some rows on
    the base model): every adapter's A products at once against all rows (their A matrices
    stacked), a 0/1 mask keeping each row's own adapter's columns, then every B at once
    (their B matrices side by side), so a projection costs four tensor operations however many
    adapters the step holds. Why not a gather per adapter (index_select, two products,
    index_add_): that is four operations per adapter and projection, and on a CPU each
    operation's dispatch costs more than a small product (docs/performance.md, LoRA adapters
    in the shared batch: the demo model fell to 0.39x of its base with four adapters). The
    stacked matrices are built once per set of adapters (`_Stacks`). The C forward adds
    adapters its own way (forward_kernel.c's add_lora) and does not come here."""

    def __init__(self, adapters: tuple[LoraAdapter, ...], slots: Optional[torch.Tensor],
                 layout: FusedLayout) -> None:
        self.adapters = adapters
        self._slots = slots  # per row, the index of its adapter (-1: none); None: all the one
        self._layout = layout
        self._stacks = _STACKS.of(adapters)
        self._masks: dict[tuple[int, ...], torch.Tensor] = {}

    @property
    def row_slots(self) -> list[int]:
        """Each row's index into `adapters` (-1: the base model)."""
        if self._slots is None:
            raise ValueError("a step with one adapter on every row has no slots to give")
        return self._slots.tolist()

    def cached(self, key: Any, build: Callable[[], Any]) -> Any:
        """What `build` makes for this set of adapters, made once while the set is in use (the
        C forward's tables of their matrices)."""
        if key not in self._stacks:
            self._stacks[key] = build()
        return self._stacks[key]

    @staticmethod
    def of(adapters: Sequence[Optional[LoraAdapter]], device: torch.device,
           layout: Optional[FusedLayout] = None,
           keep_slots: bool = False) -> Optional["StepLora"]:
        """The step of rows running `adapters` (one per row, None: the base model), or None
        when no row has one. `keep_slots`: keep each row's slot even when one adapter covers
        every row (the C forward reads them)."""
        index: dict[int, int] = {}
        distinct: list[LoraAdapter] = []
        slots = []
        for adapter in adapters:
            if adapter is None:
                slots.append(-1)
                continue
            if id(adapter) not in index:
                index[id(adapter)] = len(distinct)
                distinct.append(adapter)
            slots.append(index[id(adapter)])
        if not distinct:
            return None
        whole = len(distinct) == 1 and -1 not in slots and not keep_slots
        return StepLora(tuple(distinct), None if whole else torch.tensor(slots, device=device),
                        layout or {})

    def product(self, adapter: LoraAdapter, key: Any) -> Product:
        """The adapter's (A, B) for a module name or a fused projection's key."""
        return StepLora.product_of(adapter, key, self._layout)

    @staticmethod
    def product_of(adapter: LoraAdapter, key: Any, layout: FusedLayout) -> Product:
        """The adapter's (A, B) for a module name or a fused projection's key of `layout`,
        fused on first use and kept with the adapter."""
        parts = layout.get(key)
        if parts is None:
            return adapter.weights.get(key)
        if key not in adapter.fused:
            adapter.fused[key] = fuse(adapter, parts)
        return adapter.fused[key]

    def add(self, out: torch.Tensor, x: torch.Tensor, key: Any) -> None:
        """Add each row's adapter's `B A x` to its row of `out` (rows on dimension 0)."""
        if self._slots is None:
            pair = self.product(self.adapters[0], key)
            if pair is not None:
                out += F.linear(F.linear(x, pair[0]), pair[1])
            return
        if key not in self._stacks:
            self._stacks[key] = self._stack(key)
        stacked = self._stacks[key]
        if stacked is None:
            return
        a, b, widths = stacked
        mask = self._mask(widths, x.dtype)
        low = F.linear(x, a)
        out += F.linear(low * (mask if x.dim() == 2 else mask.unsqueeze(1)), b)

    def _stack(self, key: Any) -> Optional[tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]]:
        """Every adapter's A for `key` stacked, their B side by side, and each one's width."""
        pairs = [self.product(adapter, key) for adapter in self.adapters]
        present = [pair for pair in pairs if pair is not None]
        if not present:
            return None
        widths = tuple(0 if pair is None else pair[0].shape[0] for pair in pairs)
        return (torch.cat([pair[0] for pair in present]),
                torch.cat([pair[1] for pair in present], dim=1), widths)

    def _mask(self, widths: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """[rows, sum(widths)]: 1 where a column belongs to the row's own adapter."""
        if widths not in self._masks:
            assert self._slots is not None
            owner = torch.repeat_interleave(torch.arange(len(widths), device=self._slots.device),
                                            torch.tensor(widths, device=self._slots.device))
            self._masks[widths] = (self._slots.unsqueeze(1) == owner).to(dtype)
        return self._masks[widths]


class _Stacks:
    """Stacked matrices per set of adapters, for the last few sets seen. Why keep them: under
    steady traffic the same adapters share step after step, and stacking every projection of
    every layer anew each step would cost as much as the products. Keyed by the adapter
    objects themselves (held, so an unloaded adapter's weights live until its set is
    evicted)."""

    def __init__(self, sets: int = 2) -> None:
        self._sets = sets
        self._by_set: OrderedDict[tuple[LoraAdapter, ...], dict[Any, Any]] = OrderedDict()

    def of(self, adapters: tuple[LoraAdapter, ...]) -> dict[Any, Any]:
        stacks = self._by_set.pop(adapters, None)
        self._by_set[adapters] = {} if stacks is None else stacks
        while len(self._by_set) > self._sets:
            self._by_set.popitem(last=False)
        return self._by_set[adapters]


_STACKS = _Stacks()


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
