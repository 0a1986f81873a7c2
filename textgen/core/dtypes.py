"""The number format the weights are served in: `dtype` (LLM_DTYPE), and what `auto` picks.

Why a rule of its own: the fastest format depends on the machine. GPUs compute bfloat16
(float16 on older ones). CPUs bought today compute bfloat16 natively too (AVX512-BF16 on
AMD Zen 4 and Intel Cooper Lake on, AMX on Sapphire Rapids on), where it halves the weight
bytes a step reads and doubles the multiply-adds an instruction; elsewhere a bfloat16 weight
must be widened before every use, and float32 is the faster format. So `auto`, on a CPU:

- float32 where the CPU has neither `avx512_bf16` nor `amx_bf16` (its /proc/cpuinfo flags),
  or the weights are to be quantized to int8 (that path takes float32);
- otherwise both formats are timed at load, on the path the forward will take (the C
  forward's product, or torch's linear for the tensor and module paths), at the model's own
  widths and the engine's threads, at one row (a lone stream) and at `max_num_seqs` rows (a
  full batch). bfloat16 is served where it is faster at both; float32 otherwise.

The choice and its reason are in the load log, the `engine ready` line and `/v1/models`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import torch

NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
NATIVE_BF16 = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags: bfloat16 arithmetic

# seconds(dtype, rows): one product at the model's widths, on the path the forward takes.
ProductTimer = Callable[[torch.dtype, int], float]


class DtypeChoice(NamedTuple):
    dtype: torch.dtype
    why: str  # for the load log, `describe()` and /v1/models


def best_seconds(run: Callable[[], Any], repeats: int = 5) -> float:
    """The best of `repeats` timings of `run()`, after one untimed call (it pays for page
    faults and thread start): how a product is timed, here and in the benchmarks."""
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is not there)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def resolve_dtype(requested: str, device: torch.device, timer: Optional[ProductTimer] = None,
                  batch_rows: int = 32, flags: Optional[frozenset[str]] = None,
                  quantization: str = "none") -> DtypeChoice:
    """`requested` as asked, or the `auto` rule of the module docstring. Without a `timer` (an
    engine that does not run the forward itself), `auto` on a CPU is float32."""
    if requested != "auto":
        return DtypeChoice(NAMES[requested], "as configured")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return DtypeChoice(torch.bfloat16, "auto: the GPU computes bfloat16")
        return DtypeChoice(torch.float16, "auto: the GPU has no bfloat16, so float16")
    if quantization != "none":
        return DtypeChoice(torch.float32, f"auto: quantization `{quantization}` on the CPU "
                                          "quantizes float32 weights")
    native = sorted((cpu_flags() if flags is None else flags) & set(NATIVE_BF16))
    if not native:
        return DtypeChoice(torch.float32, "auto: this CPU has no native bfloat16 "
                                          f"({' or '.join(NATIVE_BF16)})")
    if timer is None:
        return DtypeChoice(torch.float32, "auto: float32 on the CPU for this engine")
    speedups = {rows: timer(torch.float32, rows) / timer(torch.bfloat16, rows)
                for rows in sorted({1, batch_rows})}
    measured = ", ".join(f"{s:.2f}x at {rows} row{'s' if rows > 1 else ''}"
                         for rows, s in speedups.items())
    if all(s > 1 for s in speedups.values()):
        return DtypeChoice(torch.bfloat16, f"auto: the CPU computes bfloat16 ({native[0]}) "
                                           f"and it measured faster than float32: {measured}")
    return DtypeChoice(torch.float32, f"auto: bfloat16 ({native[0]}) measured not faster "
                                      f"than float32 at every batch: {measured}")
