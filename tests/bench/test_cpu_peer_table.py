"""benchmarks/cpu_peer.py's table: medians per system and level, ratios taken within rounds."""

from __future__ import annotations

from benchmarks import cpu_peer


def row(round_: int, system: str, tokens_per_s: float) -> dict:
    return {"round": round_, "system": system, "concurrency": 32, "tokens_per_s": tokens_per_s,
            "ttft_p50_ms": 50.0, "itl_p50_ms": 8.0, "itl_p95_ms": None, "errors": 0}


def test_the_ratio_to_llamacpp_is_taken_within_each_round_then_the_median():
    # Round 1: ours 300 / llama.cpp 200 = 1.5x; round 2: 100 / 100 = 1.0x; round 3: 240 / 200.
    rows = [row(0, "ours", 300), row(0, "llamacpp", 200), row(1, "ours", 100),
            row(1, "llamacpp", 100), row(2, "ours", 240), row(2, "llamacpp", 200)]
    table = cpu_peer.table(rows)
    assert "| 32 | ours (gateway) | 240 (100-300) |" in table
    # Per-round ratios 1.5x, 1.0x and 1.2x: their median, with their spread.
    assert "| 32 | ours (gateway) / llama.cpp server | 1.20x (1.00x-1.50x) |" in table
    assert "engine in-process" not in table  # systems that were not measured are left out
