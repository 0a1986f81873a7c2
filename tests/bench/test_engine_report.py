"""make bench's engine table: each engine through the stack against vLLM's own server."""

from __future__ import annotations

from pathlib import Path

from benchmarks import report

ROOT = Path(__file__).resolve().parents[2]


def row(system: str, concurrency: int, tokens_per_s: float, ttft_p50: float) -> dict:
    return {"system": system, "workload": "fixed", "concurrency": concurrency,
            "output_tokens_per_s": tokens_per_s, "ttft_ms": {"p50": ttft_p50}}


def test_engines_are_compared_with_vllm_at_the_same_level():
    results = {"loadgen": [row("vllm", 32, 2000, 100), row("vllm-engine", 32, 1800, 104),
                           row("openai", 32, 2200, 90), row("openai", 8, 900, 20)]}
    [line] = report.engine_comparison(results)
    assert line["concurrency"] == 32
    assert (line["vllm_engine_over_vllm"], line["transformers_over_vllm"]) == (0.9, 1.1)
    assert (line["vllm_engine_ttft_p50_ms"], line["vllm_ttft_p50_ms"]) == (104, 100)


def test_a_level_the_vllm_engine_did_not_run_shows_only_what_ran():
    [line] = report.engine_comparison({"loadgen": [row("vllm", 1, 300, 5),
                                                   row("openai", 1, 250, 6)]})
    assert "vllm_engine_tokens_per_s" not in line and line["transformers_over_vllm"] == 0.833
