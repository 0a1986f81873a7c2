"""The interleaved OpenAI-vs-generate_stream table: per-round ratios, then their median."""

from __future__ import annotations

from pathlib import Path

from benchmarks import openai_overhead

ROOT = Path(__file__).resolve().parents[2]


def test_table_takes_ratios_within_each_round_then_the_median():
    rows = []
    for round_, (stream, chat, ttft_stream, ttft_chat) in enumerate(
            [(1000, 900, 50, 52), (2000, 1900, 60, 61), (1000, 950, 40, 45)]):
        rows += [{"round": round_, "api": "generate_stream", "concurrency": 32,
                  "tokens_per_s": stream, "ttft_p50_ms": ttft_stream},
                 {"round": round_, "api": "openai", "concurrency": 32,
                  "tokens_per_s": chat, "ttft_p50_ms": ttft_chat}]
    line = openai_overhead.table(rows).splitlines()[2]
    assert line == ("| 32 | 1,000 (1,000-2,000) | 950 (900-1,900) | 0.95x (0.90x-0.95x) | "
                    "50.0 (40.0-60.0) | 52.0 (45.0-61.0) | 2.0 ms (1.0 ms-5.0 ms) |")
