"""`llm:engine_info` (contracts/engine_info.py): the facts survive Prometheus' text format,
escapes included, and a scrape without the series reads as None."""

from __future__ import annotations

from contracts import engine_info


def test_parse_reads_the_labels_back_in_the_contracts_order():
    text = ('# HELP llm:engine_info What the engine chose\n# TYPE llm:engine_info gauge\n'
            'llm:engine_info{model_name="llm",engine="transformers",dtype="bfloat16",'
            'dtype_reason="auto: it \\"measured\\" 1.7x \\\\ faster",executor="llama",'
            'forward_path="c"} 1\nvllm:num_requests_running{model_name="llm"} 0\n')
    assert engine_info.parse(text) == {
        "engine": "transformers", "dtype": "bfloat16",
        "dtype_reason": 'auto: it "measured" 1.7x \\ faster', "executor": "llama",
        "forward_path": "c"}


def test_labels_take_the_facts_the_contract_names_and_leave_the_rest():
    facts = {"engine": "vllm", "dtype": "float32", "dtype_reason": "as configured",
             "context_length": 512}
    assert engine_info.labels(facts) == {"engine": "vllm", "dtype": "float32",
                                         "dtype_reason": "as configured", "executor": "",
                                         "forward_path": ""}


def test_a_scrape_without_the_series_has_no_facts():
    assert engine_info.parse('vllm:num_requests_running{model_name="llm"} 0\n') is None
