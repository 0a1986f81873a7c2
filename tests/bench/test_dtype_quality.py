"""What bfloat16 and int8 cost in quality on the real model, scored through the forward that
serves them (benchmarks/dtype_quality.py): held-out perplexity within 1% (bfloat16) and 2%
(int8) of float32's, and float32 through the same executor token-identical to HF `generate`."""

from __future__ import annotations

from benchmarks.dtype_quality import measure
from tests.textgen.executors.models import needs_cc


@needs_cc  # int8 runs in the C forward (elsewhere torch's int8 modules serve it, less well)
def test_bfloat16_and_int8_keep_the_real_models_perplexity_close_to_float32(real_model_dir):
    rows = measure(real_model_dir, ["float32", "bfloat16", "int8"], window=128, max_windows=8,
                   prompts=4, new_tokens=16)
    assert rows["float32"]["identical"] == 1.0, rows  # the reference path itself is exact
    assert abs(rows["bfloat16"]["vs_float32"]) < 0.01, rows
    assert abs(rows["int8"]["vs_float32"]) < 0.02, rows
    assert rows["int8"]["forward_path"] == "c", rows
    # A real score: SmolLM2 on English prose is far from uniform over 49,152 tokens.
    assert 1 < rows["float32"]["perplexity"] < 100, rows
    # bfloat16 answers much as float32 does (not token-identical: 8 bits of mantissa).
    assert rows["bfloat16"]["prefix_share"] > 0.25, rows
