"""lm-evaluation-harness, a client nobody here wrote, scores the demo model through the gateway
exactly as its own `hf` backend scores it (benchmarks/lm_eval_suite.py: tasks built from text
the project ships; `lm_eval` from .venv-eval, `make lm-eval`)."""

from __future__ import annotations

from benchmarks.lm_eval_suite import ITEMS, compare, evaluate, loglikelihoods
from tools import runtime


def test_lm_eval_through_the_gateway_scores_as_its_own_hf_backend(gateway, api_key, tmp_path):
    reference, served = evaluate(gateway.url, api_key, runtime.DEMO_MODEL, "demo_model",
                                 tmp_path, max_length=512)
    result = compare(reference, served)
    assert result.scored == ITEMS * 4 + ITEMS  # four choices per item, one ending per item
    assert result.max_difference <= 1e-3, result
    assert result.same_scores and result.same_generations, (reference.scores, served.scores)
    # Real scores: the choices' loglikelihoods differ, and greedy decoding writes words.
    choices = loglikelihoods(served, "llm_service_choice")
    assert len(set(choices)) > ITEMS and all(value < 0 for value in choices)
    assert any(sample["resps"][0][0].strip()
               for sample in served.samples["llm_service_continue"])
