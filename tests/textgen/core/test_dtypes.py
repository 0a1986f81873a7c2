"""`dtype` `auto` (textgen/core/dtypes.py): each branch forced, on any CPU, and the choice with
its reason where the engine reports it; then the real timing on this CPU's own forward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from textgen.core.config import EngineConfig
from textgen.core.dtypes import NATIVE_BF16, cpu_flags, resolve_dtype
from textgen.executors.hf import product_timer
from textgen.transformers_engine.engine import TransformersEngine

CPU = torch.device("cpu")


def timer_where_bfloat16_takes(share: dict[int, float]):
    """A product timer: float32 takes 1 s, bfloat16 `share[rows]` of it."""
    return lambda dtype, rows: 1.0 if dtype == torch.float32 else share[rows]


def test_a_configured_dtype_is_served_as_configured_whatever_the_cpu():
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        assert resolve_dtype(name, CPU, flags=frozenset()) == (dtype, "as configured")


def test_auto_serves_float32_on_a_cpu_without_native_bfloat16_and_says_so():
    def never(dtype, rows):
        raise AssertionError("nothing is timed where the CPU has no bfloat16")

    choice = resolve_dtype("auto", CPU, never, flags=frozenset({"avx2", "avx512f"}))
    assert choice.dtype == torch.float32
    assert "no native bfloat16 (avx512_bf16 or amx_bf16)" in choice.why


@pytest.mark.parametrize("flag", NATIVE_BF16)
def test_auto_serves_bfloat16_where_the_cpu_computes_it_and_it_measures_faster(flag):
    choice = resolve_dtype("auto", CPU, timer_where_bfloat16_takes({1: 0.5, 32: 0.8}),
                           batch_rows=32, flags=frozenset({flag}))
    assert choice.dtype == torch.bfloat16
    assert choice.why == (f"auto: the CPU computes bfloat16 ({flag}) and it measured faster "
                          "than float32: 2.00x at 1 row, 1.25x at 32 rows")


def test_auto_keeps_float32_where_bfloat16_is_slower_at_either_batch():
    choice = resolve_dtype("auto", CPU, timer_where_bfloat16_takes({1: 0.5, 16: 1.1}),
                           batch_rows=16, flags=frozenset({"amx_bf16"}))
    assert choice.dtype == torch.float32
    assert "measured not faster than float32 at every batch: 2.00x at 1 row, 0.91x at 16 rows" \
        in choice.why


def test_auto_keeps_float32_for_int8_on_a_cpu_which_quantizes_float32_weights():
    choice = resolve_dtype("auto", CPU, timer_where_bfloat16_takes({1: 0.5, 32: 0.5}),
                           flags=frozenset({"avx512_bf16"}), quantization="int8")
    assert choice.dtype == torch.float32 and "quantization `int8`" in choice.why


def test_auto_without_a_timer_serves_float32_on_a_cpu():
    """The vLLM engine does not run the forward itself, so nothing of ours is timed."""
    choice = resolve_dtype("auto", CPU, flags=frozenset({"avx512_bf16"}))
    assert choice.dtype == torch.float32


def test_the_cpu_flags_come_from_proc_cpuinfo(tmp_path: Path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize("forward_path", ["auto", "tensor"])
def test_the_timer_times_both_dtypes_on_the_path_the_forward_takes(demo_model_dir, forward_path):
    """Real timings (positive, finite) of the C forward's product and of torch's linear."""
    from textgen.core.loading import load_config

    timer = product_timer("auto", forward_path, load_config(demo_model_dir))
    for dtype in (torch.float32, torch.bfloat16):
        for rows in (1, 8):
            assert 0 < timer(dtype, rows) < 1


@pytest.mark.parametrize("flags, served", [
    (frozenset(), "float32"),
    (frozenset({"avx512_bf16"}), None),  # whatever the timing on this CPU says
])
def test_the_engine_reports_the_dtype_it_chose_and_why(demo_model_dir, monkeypatch, flags,
                                                       served):
    monkeypatch.setattr("textgen.core.dtypes.cpu_flags", lambda: flags)
    engine = TransformersEngine(EngineConfig(model_dir=demo_model_dir, max_num_seqs=8))
    try:
        facts = engine.describe()
        assert facts["dtype"] == (served or str(engine.dtype).removeprefix("torch."))
        assert facts["dtype_reason"].startswith("auto: ")
        if served is None:
            assert "measured" in facts["dtype_reason"]
            assert "at 8 rows" in facts["dtype_reason"]
    finally:
        engine.shutdown()

