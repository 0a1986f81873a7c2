"""A request for n sequences: one prefill, its cache copied for each; every sequence samples
from its own stream (a seeded request's sequence i as the same request seeded seed + i would),
finishes on its own, and all of them end when the request leaves before it ran."""

from __future__ import annotations

import threading
from typing import Any, Sequence

import pytest

from tests.textgen.transformers_engine.test_engine import run
from textgen.core.config import EngineConfig
from textgen.core.outputs import FinishReason, SequenceOutput
from textgen.core.validation import GenerationRequest, ValidationError
from textgen.transformers_engine.engine import TransformersEngine


class ChoicesSink:
    """Collects the pieces and the ends of a request's n sequences, by index."""

    def __init__(self, n: int, cancelled: bool = False) -> None:
        self.pieces: dict[int, list[str]] = {i: [] for i in range(n)}
        self.outputs: dict[int, SequenceOutput] = {}
        self._n = n
        self._cancelled = cancelled
        self.done = threading.Event()

    def on_text(self, delta: str, logprobs: Sequence[Any] = (), index: int = 0) -> None:
        self.pieces[index].append(delta)

    def on_finish(self, output: SequenceOutput) -> None:
        assert output.index not in self.outputs, "a sequence ended twice"
        self.outputs[output.index] = output
        if len(self.outputs) == self._n:
            self.done.set()

    def is_cancelled(self) -> bool:
        return self._cancelled

    def results(self) -> list[SequenceOutput]:
        assert self.done.wait(60), f"only {sorted(self.outputs)} of {self._n} sequences ended"
        return [self.outputs[i] for i in range(self._n)]


def test_each_seeded_sequence_is_the_request_seeded_seed_plus_its_index(engine):
    request = GenerationRequest(prompt="The list", max_tokens=16, temperature=1.0, seed=40,
                                n=3, ignore_eos=True)
    sink = ChoicesSink(3)
    engine.submit(request, sink)
    choices = sink.results()
    alone = run(engine, [GenerationRequest(prompt="The list", max_tokens=16, temperature=1.0,
                                           seed=40 + i, ignore_eos=True) for i in range(3)])
    assert [c.text for c in choices] == [a.text for a in alone]
    assert len({c.text for c in choices}) > 1  # the sequences differ
    assert [c.index for c in choices] == [0, 1, 2]
    assert all("".join(sink.pieces[i]) == choices[i].text for i in range(3))
    assert all(c.prompt_tokens == alone[0].prompt_tokens for c in choices)


def test_greedy_sequences_are_the_same_text_and_finish_on_their_own(engine):
    sink = ChoicesSink(2)
    engine.submit(GenerationRequest(prompt="A function is", max_tokens=12, n=2, logprobs=1),
                  sink)
    first, second = sink.results()
    assert first.text == second.text == run(
        engine, [GenerationRequest(prompt="A function is", max_tokens=12)])[0].text
    assert first.finish_reason == second.finish_reason
    assert first.logprobs == second.logprobs and len(first.logprobs) == first.completion_tokens


def test_a_request_that_leaves_before_its_prefill_ends_every_sequence(engine):
    sink = ChoicesSink(4, cancelled=True)
    engine.submit(GenerationRequest(prompt="The list", max_tokens=8, n=4), sink)
    assert {o.finish_reason for o in sink.results()} == {FinishReason.CANCELLED}


def test_more_sequences_than_the_batch_holds_are_refused_by_name(demo_model_dir):
    engine = TransformersEngine(EngineConfig(model_dir=demo_model_dir, max_num_seqs=2))
    try:
        with pytest.raises(ValidationError, match=r"`n` must be at most this server's "
                                                  r"max_num_seqs \(2\), got 3"):
            engine.submit(GenerationRequest(prompt="The list", max_tokens=4, n=3),
                          ChoicesSink(3))
    finally:
        engine.shutdown()
