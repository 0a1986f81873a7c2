"""The median-of-runs table that performance claims quote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import median

ROOT = Path(__file__).resolve().parents[2]


def write_run(folder: Path, ours: float, static: float, ttft: float) -> Path:
    folder.mkdir()
    head = {"throughput_concurrency": 32, "ttft_concurrency": 8, "systems": {
        "ours": {"output_tokens_per_s": ours, "ttft_p50_ms": ttft, "ttft_p95_ms": 2 * ttft},
        "static": {"output_tokens_per_s": static, "ttft_p50_ms": 400.0, "ttft_p95_ms": 900.0}}}
    meta = {"commit": "abc1234", "machine_line": "2 cores"}
    (folder / "results.json").write_text(json.dumps({"headline": head, "meta": meta}))
    return folder


def test_table_gives_the_median_with_min_and_max_and_per_run_ratios(tmp_path):
    runs = median.load([write_run(tmp_path / "a-full", 1500, 1000, 20),
                        write_run(tmp_path / "b-full", 1600, 800, 30),
                        write_run(tmp_path / "c-full", 1400, 1000, 10)])
    lines = median.table(runs).splitlines()
    assert lines[0] == "| | ours | static | ours/static |"
    assert lines[2] == ("| output tokens/s, 32 clients | 1,500 (1,400-1,600) | 1,000 (800-1,000) "
                        "| 1.50x (1.40x-2.00x) |")
    assert lines[3].startswith("| TTFT p50 (ms), 8 streams | 20.0 (10.0-30.0) | 400.0 |")


def test_asking_for_more_runs_than_exist_says_how_many_to_make(tmp_path):
    write_run(tmp_path / "20261126-0900-full", 1, 1, 1)
    with pytest.raises(SystemExit, match="run `make bench` 2 more time"):
        median.latest_full_runs(3, tmp_path)


def test_openai_overhead_table_gives_each_levels_median_of_per_run_figures(tmp_path):
    runs = []
    for name, kept, added in (("a", 0.95, 1.0), ("b", 0.90, 3.0), ("c", 0.97, 2.0)):
        folder = write_run(tmp_path / f"{name}-full", 1, 1, 1)
        data = json.loads((folder / "results.json").read_text())
        data["headline"]["openai_overhead"] = [{
            "workload": "fixed", "concurrency": 32, "tokens_per_s": 1000 * kept,
            "generate_stream_tokens_per_s": 1000.0, "tokens_ratio": kept,
            "ttft_p50_ms": 50 + added, "generate_stream_ttft_p50_ms": 50.0,
            "ttft_p50_added_ms": added}]
        (folder / "results.json").write_text(json.dumps(data))
        runs.append(folder)
    lines = median.openai_table(median.load(runs)).splitlines()
    assert lines[2] == ("| fixed | 32 | 950 (900-970) | 1,000 | 0.95x (0.90x-0.97x) | "
                        "52.0 (51.0-53.0) | 50.0 | 2.0 (1.0-3.0) |")
    assert median.openai_table(median.load([write_run(tmp_path / "d-full", 1, 1, 1)])) == ""
