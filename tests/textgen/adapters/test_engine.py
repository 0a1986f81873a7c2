"""The transformers engine serving adapters: chosen per request, mixed in its running batch,
bounded in memory, loaded and unloaded while it runs."""

from __future__ import annotations

import shutil
import time

import pytest

from tests.textgen.transformers_engine.test_engine import Sink, run
from textgen.adapters.peft_format import UnknownAdapter
from textgen.core.config import EngineConfig
from textgen.core.outputs import FinishReason, SequenceOutput
from textgen.core.validation import GenerationRequest
from textgen.transformers_engine.engine import TransformersEngine


def request(adapter: str = "", prompt: str = "The list", **extra) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, max_tokens=16, ignore_eos=True, adapter=adapter,
                             **extra)


@pytest.fixture(scope="module", params=["llama", "hf"])
def engine(request, demo_model_dir, adapter_dirs):
    """max_loras 1: two adapters take turns in memory."""
    engine = TransformersEngine(EngineConfig(
        model_dir=demo_model_dir, executor=request.param, dtype="float32", max_num_seqs=8,
        lora_adapters=tuple(adapter_dirs.items()), enable_lora=True, max_loras=1))
    yield engine
    engine.shutdown()


def test_the_engine_says_what_it_serves_and_keeps_its_default_forward(engine):
    facts = engine.describe()
    assert facts["adapters"] == ["notice", "tutorial"] and facts["max_loras"] == 1
    c_forward = "c" if shutil.which("cc") or shutil.which("gcc") else "tensor"
    assert facts["forward_path"] == {"llama": c_forward, "hf": "module"}[facts["executor"]]


def test_requests_mixed_over_base_and_adapters_get_what_each_gets_alone(engine):
    names = ["", "notice", "tutorial"]
    alone = {name: run(engine, [request(name)])[0].text for name in names}
    assert len(set(alone.values())) == 3  # each adapter answers differently
    mixed = run(engine, [request(name) for name in names * 3])
    assert [o.text for o in mixed] == [alone[name] for name in names * 3]
    assert all(o.finish_reason is FinishReason.LENGTH for o in mixed)


class Choices(Sink):
    """Collects every sequence of a request with n > 1, by index."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.outputs: dict[int, SequenceOutput] = {}
        self._n = n

    def on_finish(self, output: SequenceOutput) -> None:
        self.outputs[output.index] = output
        if len(self.outputs) == self._n:
            super().on_finish(output)


def test_n_sequences_of_one_request_all_run_its_adapter_and_all_let_it_go(engine):
    alone = run(engine, [request("tutorial")])[0].text
    sink = Choices(3)
    engine.submit(request("tutorial", n=3), sink)
    sink.result()
    assert [sink.outputs[i].text for i in range(3)] == [alone] * 3
    # max_loras is 1: the other adapter can only become resident if no fork still holds this one
    assert run(engine, [request("notice")])[0].finish_reason is FinishReason.LENGTH


def test_an_unknown_adapter_is_refused_before_queuing_naming_those_served(engine):
    with pytest.raises(UnknownAdapter, match="'nope' is not served here; the adapters served: "
                                             "`notice`, `tutorial`"):
        engine.submit(request("nope"), Sink())


def test_unloading_finishes_the_running_request_and_refuses_new_ones(engine, adapter_dirs):
    assert engine.adapters is not None
    sink = Sink()
    engine.submit(GenerationRequest(prompt="The", max_tokens=120, ignore_eos=True,
                                    adapter="notice"), sink)
    deadline = time.monotonic() + 30
    while not sink.pieces and time.monotonic() < deadline:
        time.sleep(0.005)
    engine.adapters.unload("notice")
    with pytest.raises(UnknownAdapter):
        engine.submit(request("notice"), Sink())
    output = sink.result()
    assert (output.finish_reason, output.completion_tokens) == (FinishReason.LENGTH, 120)
    engine.adapters.load("notice", adapter_dirs["notice"])
    assert run(engine, [request("notice")])[0].finish_reason is FinishReason.LENGTH
