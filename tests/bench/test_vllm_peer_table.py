"""benchmarks/vllm_peer.py's table: medians per system and level, ratios taken within rounds."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import vllm_peer  # noqa: E402


def row(round_: int, system: str, tokens_per_s: float, errors: int = 0) -> dict:
    return {"round": round_, "system": system, "concurrency": 32, "tokens_per_s": tokens_per_s,
            "ttft_p50_ms": 50.0, "itl_p50_ms": 8.0, "errors": errors, "sent": 100}


def test_ratios_are_taken_within_each_round_then_the_median():
    # Round 1: 300 / 200 = 1.5x; round 2: 100 / 100 = 1.0x; round 3: 240 / 200 = 1.2x.
    rows = [row(1, "ours", 300), row(1, "vllm", 200), row(2, "ours", 100),
            row(2, "vllm", 100), row(3, "ours", 240), row(3, "vllm", 200, errors=3)]
    table = vllm_peer.table(rows)
    assert "| 32 | ours | 240 (100-300) |" in table
    assert "| 32 | ours / vLLM | 1.20x (1.00x-1.50x) |" in table
    assert "| 3 of 300 |" in table  # errors are counted, never hidden


def test_a_round_where_the_peer_served_nothing_gives_no_ratio():
    table = vllm_peer.table([row(1, "ours", 300), row(1, "vllm", 0, errors=100)])
    assert "ours / vLLM" not in table
