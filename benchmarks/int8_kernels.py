#!/usr/bin/env python3
"""The int8 matrix products a CPU engine could use, one against another on the same product:
why `quantization` `int8` runs in the C forward.

One product of a model's MLP (gate/up: [2 x intermediate, hidden]; SmolLM2's 3072 x 576 by
default) at 1 row (a lone stream: bound by the bytes of the weights) and at 32 rows (a full
batch: bound by arithmetic), on `--threads` threads, best of `--repeats`:

  torch dynamic int8   torch.ao's dynamically quantized Linear (fbgemm/oneDNN), what the HF
                       executor's int8 runs
  _weight_int8pack_mm  torch's weight-only int8 kernel (float32 inputs; its bfloat16 inputs
                       were wrong in torch 2.13 here: off by 5.8 on a 4 x 128 product)
  C int8               the C forward's product: int8 panels, inputs quantized per block of
                       32, AVX512-VNNI where the CPU has it (textgen/executors/native/)
  C bfloat16, C float32, torch float32   the unquantized products, for scale

  .venv/bin/python -m benchmarks.int8_kernels
  .venv/bin/python -m benchmarks.int8_kernels --out 22016 --width 4096 --threads 16   # a 7B MLP
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Callable, Optional

import torch


def candidates(out: int, width: int, rows: int, threads: int
               ) -> dict[str, Callable[[], object]]:
    """Each candidate's product over the same random weights and inputs, ready to call."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    from textgen.executors.native import kernel

    generator = torch.Generator().manual_seed(0)
    weight = torch.randn((out, width), generator=generator)
    x = torch.randn((rows, width), generator=generator)
    scale = weight.abs().amax(dim=1) / 127
    quantized = torch.round(weight / scale[:, None]).to(torch.int8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dynamic = DynamicLinear(width, out, bias_=False, dtype=torch.qint8)
        dynamic.set_weight_bias(torch.quantize_per_channel(
            weight, scale, torch.zeros(out, dtype=torch.long), 0, torch.qint8), None)
    return {
        "torch float32 (F.linear)": lambda: torch.nn.functional.linear(x, weight),
        "torch dynamic int8": lambda: dynamic(x),
        "torch _weight_int8pack_mm": lambda: torch._weight_int8pack_mm(x, quantized, scale),
        **{f"C {str(dtype)[6:]}": kernel.product(kernel.pack_as(weight, dtype), x, out, dtype,
                                                  threads)
           for dtype in (torch.float32, torch.bfloat16, torch.int8)},
    }


def main(argv: Optional[list[str]] = None) -> int:
    from benchmarks.cpu_threads import cpu_description
    from textgen.core.dtypes import best_seconds

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--out", type=int, default=3072)
    parser.add_argument("--width", type=int, default=576)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_description()}; {args.threads} thread(s); product [{args.out}, "
          f"{args.width}], best of {args.repeats}")
    print("| kernel | 1 row, us | 32 rows, us | 32 rows, GFLOP/s |")
    print("|---|---:|---:|---:|")
    one, full = (candidates(args.out, args.width, rows, args.threads) for rows in (1, 32))
    with torch.inference_mode():
        for name in one:
            a, b = best_seconds(one[name], args.repeats), best_seconds(full[name], args.repeats)
            print(f"| {name} | {a * 1e6:,.0f} | {b * 1e6:,.0f} "
                  f"| {2 * 32 * args.out * args.width / b / 1e9:,.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
