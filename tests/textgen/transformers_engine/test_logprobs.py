"""Logprobs from the engine are the model's own: each generated token's and each prompt
token's log-probability equals a log-softmax of the HF module's logits at that position, with
every executor, whatever the request's sampling does to the logits; streamed pieces carry their
tokens' entries; a request with max_tokens 0 only scores its prompt."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.textgen.transformers_engine.test_engine import Sink, run
from textgen.core.outputs import FinishReason
from textgen.core.validation import GenerationRequest, ValidationError


@pytest.fixture(scope="module")
def reference(demo_model_dir):
    """The log-softmax of the HF module's logits after each of `ids`, [len, vocab]."""
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir).eval()

    def logprobs(ids: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return logprobs


def test_each_generated_tokens_logprob_is_the_models_at_its_position(engine, reference):
    request = GenerationRequest(prompt="The list", max_tokens=12, logprobs=3, ignore_eos=True)
    output = run(engine, [request])[0]
    prompt = engine.tokenizer.encode("The list")
    generated = [entry.chosen.token_id for entry in output.logprobs]
    assert len(generated) == output.completion_tokens == 12
    expected = reference(prompt + generated)[len(prompt) - 1:-1]
    for position, entry in enumerate(output.logprobs):
        row = expected[position]
        assert entry.chosen.logprob == pytest.approx(row[entry.chosen.token_id].item(), abs=1e-4)
        best = torch.topk(row, 3)
        assert [c.token_id for c in entry.top] == best.indices.tolist()
        assert [c.logprob for c in entry.top] == pytest.approx(best.values.tolist(), abs=1e-4)
        assert entry.top[0] == entry.chosen  # greedy: the chosen token is the best one
        assert entry.chosen.token == engine.tokenizer.decode([entry.chosen.token_id])


def test_logprobs_are_the_models_before_temperature_penalties_and_bias(engine):
    """vLLM's default (raw logprobs): what a request does to sampling does not change them."""
    plain = run(engine, [GenerationRequest(prompt="A function is", max_tokens=1,
                                           logprobs=5)])[0]
    best = plain.logprobs[0].top[0].token_id
    reshaped = run(engine, [GenerationRequest(
        prompt="A function is", max_tokens=1, logprobs=5, temperature=1.5, seed=3,
        repetition_penalty=1.8, logit_bias=((best, -100.0),))])[0]
    assert reshaped.logprobs[0].chosen.token_id != best  # the bias did steer sampling
    assert reshaped.logprobs[0].top == plain.logprobs[0].top


def test_prompt_logprobs_score_every_prompt_token_and_max_tokens_0_only_scores(engine,
                                                                                reference):
    text = "Python is a programming language"
    prompt = engine.tokenizer.encode(text)
    expected = reference(prompt)
    output = run(engine, [GenerationRequest(prompt=text, max_tokens=0, prompt_logprobs=2)])[0]
    assert (output.finish_reason, output.completion_tokens, output.text) == (
        FinishReason.LENGTH, 0, "")
    assert len(output.prompt_logprobs) == len(prompt) and output.prompt_logprobs[0] is None
    for t, entry in enumerate(output.prompt_logprobs[1:], start=1):
        assert entry.chosen.token_id == prompt[t]
        assert entry.chosen.logprob == pytest.approx(expected[t - 1, prompt[t]].item(), abs=1e-4)
        assert [c.token_id for c in entry.top] == torch.topk(expected[t - 1], 2).indices.tolist()
    assert output.logprobs is None  # not asked


def test_a_prompt_that_asks_beside_prompts_that_do_not_changes_none_of_their_text(engine):
    plain = [GenerationRequest(prompt=p, max_tokens=10) for p in ("The list", "Exceptions")]
    alone = [o.text for o in run(engine, plain)]
    mixed = run(engine, [plain[0], GenerationRequest(prompt="A function is", max_tokens=10,
                                                     prompt_logprobs=1, logprobs=1), plain[1]])
    assert [mixed[0].text, mixed[2].text] == alone
    assert mixed[0].prompt_logprobs is None and mixed[0].logprobs is None
    assert mixed[1].prompt_logprobs is not None
    assert len(mixed[1].logprobs) == mixed[1].completion_tokens


def test_streamed_pieces_carry_every_tokens_entry_once(engine):
    sink = Sink()
    engine.submit(GenerationRequest(prompt="The list", max_tokens=30, logprobs=0,
                                    stop=("class",)), sink)
    output = sink.result()
    assert sink.logprobs == list(output.logprobs)
    assert len(output.logprobs) == output.completion_tokens
    assert all(entry.top == () for entry in output.logprobs)


def test_prompt_logprobs_past_the_logits_bound_are_refused_with_the_longest_allowed():
    from textgen.transformers_engine.logprobs import check_prompt_logits

    vocab, limit_mib = 49152, 1024
    most = limit_mib * 2**20 // (vocab * 4)
    assert most == 5461
    check_prompt_logits(most, vocab, limit_mib)
    with pytest.raises(ValidationError) as caught:
        check_prompt_logits(most + 1, vocab, limit_mib)
    assert caught.value.parameter == "prompt_logprobs"
    assert "max_prompt_logits_mib (1,024)" in str(caught.value)
    assert f"score at most {most} tokens" in str(caught.value)


@pytest.mark.parametrize("asking", [[0, 1, 2, 3], [1, 3]])
def test_the_c_pass_and_torch_score_alike_and_sampling_after_them_changes_nothing(asking):
    """`score` before sampling, `records` after it: the C pass (where the C forward runs) and
    torch agree, and a row sampling reshapes in place keeps its raw log-probabilities."""
    from textgen.executors.native.kernel import KernelUnavailable, logprob_pass
    from textgen.transformers_engine.logprobs import records, score

    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 500, generator=generator) * 4
    expected = torch.log_softmax(logits, dim=-1)
    top = [5, 0, 20, 1][:len(asking)]
    reshaped = [True, False, True, False][:len(asking)]
    texts = [f"t{i}" for i in range(500)]
    try:
        logprob_pass(logits[:1], 1)
        passes = [None, logprob_pass]
    except KernelUnavailable:
        passes = [None]
    for native in passes:
        batch = logits.clone()
        scores = score(batch, asking, top, reshaped, native)
        batch[asking[0]] += torch.arange(500.0)  # what logit_bias or penalties would do
        chosen = [int(expected[row].argmin()) for row in asking]
        entries = records(scores, chosen, texts)
        for entry, row, token, k in zip(entries, asking, chosen, top):
            assert entry.chosen.token_id == token and entry.chosen.token == f"t{token}"
            assert entry.chosen.logprob == pytest.approx(expected[row, token].item(), abs=1e-4)
            best = torch.topk(expected[row], k)
            assert [c.token_id for c in entry.top] == best.indices.tolist()
            assert [c.logprob for c in entry.top] == pytest.approx(best.values.tolist(),
                                                                     abs=1e-4)
