"""What bfloat16 costs in quality on the real model, scored through the forward that serves it
(benchmarks/dtype_quality.py): held-out perplexity within 1% of float32's, and float32 through
the same executor token-identical to HF `generate`."""

from __future__ import annotations

from benchmarks.dtype_quality import measure


def test_bfloat16_keeps_the_real_models_perplexity_within_one_percent_of_float32(real_model_dir):
    rows = measure(real_model_dir, ["float32", "bfloat16"], window=128, max_windows=8,
                   prompts=4, new_tokens=16)
    assert rows["float32"]["identical"] == 1.0, rows  # the reference path itself is exact
    assert abs(rows["bfloat16"]["vs_float32"]) < 0.01, rows
    # A real score: SmolLM2 on English prose is far from uniform over 49,152 tokens.
    assert 1 < rows["float32"]["perplexity"] < 100, rows
    # bfloat16 answers mostly as float32 does (not token-identical: 8 bits of mantissa).
    assert rows["bfloat16"]["prefix_share"] > 0.25, rows
