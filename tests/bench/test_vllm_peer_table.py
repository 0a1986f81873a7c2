"""benchmarks/vllm_peer.py's table: medians per system and level, ratios taken within rounds."""

from __future__ import annotations

from benchmarks import vllm_peer


def row(round_: int, system: str, tokens_per_s: float, errors: int = 0,
        ttft_ms: float = 50.0) -> dict:
    return {"round": round_, "system": system, "concurrency": 32, "tokens_per_s": tokens_per_s,
            "ttft_p50_ms": ttft_ms, "itl_p50_ms": 8.0, "errors": errors, "sent": 100}


def test_the_ratio_to_vllm_is_taken_within_each_round_then_the_median():
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


def test_the_vllm_engine_in_the_stack_is_compared_with_bare_vllm_round_by_round():
    # ours-vllm / vLLM: 180 / 200 = 0.9x with TTFT +4 ms, then 190 / 200 = 0.95x with +2 ms.
    rows = [row(1, "ours-vllm", 180, ttft_ms=54), row(1, "vllm", 200),
            row(2, "ours-vllm", 190, ttft_ms=52), row(2, "vllm", 200)]
    table = vllm_peer.table(rows)
    assert "| 32 | ours-vllm / vLLM | 0.93x (0.90x-0.95x) | 3.0 ms (2.0 ms-4.0 ms) |" in table
    assert "| 32 | ours |" not in table  # a system that did not run has no row
