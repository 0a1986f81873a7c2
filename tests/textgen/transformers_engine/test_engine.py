"""The engine driven in-process with the demo model: scheduling, sampling, cancellation."""

from __future__ import annotations

import threading
import time
from typing import Any, Sequence

import pytest

from textgen.core.admission import Overloaded
from textgen.core.config import EngineConfig
from textgen.core.outputs import EngineObserver, FinishReason, SequenceOutput
from textgen.core.validation import GenerationRequest, ValidationError
from textgen.transformers_engine.engine import TransformersEngine

PROMPTS = ["The list", "A function is", "Python is a programming language", "Exceptions"]


class Sink:
    """Collects one sequence; can cancel itself after `cancel_after` pieces of text."""

    def __init__(self, cancel_after: int | None = None, cancelled: bool = False) -> None:
        self.pieces: list[str] = []
        self.logprobs: list[Any] = []  # what the pieces carried
        self.output: SequenceOutput | None = None
        self.done = threading.Event()
        self._cancel_after = cancel_after
        self._cancelled = cancelled

    def on_text(self, delta: str, logprobs: Sequence[Any] = (), index: int = 0) -> None:
        self.pieces.append(delta)
        self.logprobs.extend(logprobs)

    def on_finish(self, output: SequenceOutput) -> None:
        self.output = output
        self.done.set()

    def is_cancelled(self) -> bool:
        return self._cancelled or (self._cancel_after is not None
                                   and len(self.pieces) >= self._cancel_after)

    def result(self) -> SequenceOutput:
        assert self.done.wait(60), "sequence did not finish"
        assert self.output is not None
        return self.output


class GateSink(Sink):
    """Holds the engine thread at its first piece of text until `release` is set: the running
    batch is then known to be full, whatever the machine's speed."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.release = threading.Event()

    def on_text(self, delta: str, logprobs: Sequence[Any] = (), index: int = 0) -> None:
        self.started.set()
        self.release.wait(30)
        super().on_text(delta, logprobs)


def run(engine: TransformersEngine, requests: list[GenerationRequest]) -> list[SequenceOutput]:
    sinks = [Sink() for _ in requests]
    for request, sink in zip(requests, sinks):
        engine.submit(request, sink)
    return [sink.result() for sink in sinks]


@pytest.fixture(scope="module", params=[("continuous", "llama"), ("static", "llama"),
                                        ("continuous", "hf")], ids="-".join)
def engine(request, demo_model_dir):
    """Both schedulers, and both executors (the lean Llama forward and the HF module). Every
    token is its own piece (stream interval 0), so tests can count steps by pieces. float32
    on every device: the tests compare exact text (`auto` is bf16 on a GPU)."""
    scheduling, executor = request.param
    engine = TransformersEngine(EngineConfig(model_dir=demo_model_dir, scheduling=scheduling,
                                 executor=executor, dtype="float32", max_num_seqs=8,
                                 stream_interval_ms=0))
    yield engine
    engine.shutdown()


def test_greedy_text_is_identical_alone_and_when_joining_a_running_batch(engine):
    alone = [run(engine, [GenerationRequest(prompt=p, max_tokens=24)])[0].text
             for p in PROMPTS]
    long_sink = Sink()
    engine.submit(GenerationRequest(prompt="The module", max_tokens=80, ignore_eos=True),
                  long_sink)
    deadline = time.monotonic() + 30
    while len(long_sink.pieces) < 5 and time.monotonic() < deadline:
        time.sleep(0.005)  # joiners arrive while it is mid-generation
    joined = run(engine, [GenerationRequest(prompt=p, max_tokens=24 + i, temperature=1.2 * (i % 2),
                                            seed=i) for i, p in enumerate(PROMPTS)])
    for i in (0, 2):
        assert joined[i].text == alone[i]
    assert long_sink.result().completion_tokens == 80


def test_seeded_request_is_reproducible_in_any_company(engine):
    seeded = GenerationRequest(prompt="The", max_tokens=20, temperature=1.0, top_k=40, seed=7)
    alone = run(engine, [seeded])[0]
    crowd = run(engine, [GenerationRequest(prompt=p, max_tokens=12, temperature=0.8)
                         for p in PROMPTS] + [seeded])
    assert crowd[-1].text == alone.text


def test_streamed_pieces_concatenate_to_the_final_text(engine):
    sink = Sink()
    engine.submit(GenerationRequest(prompt="The list", max_tokens=40, stop=("class",)), sink)
    output = sink.result()
    assert "".join(sink.pieces) == output.text
    assert "class" not in output.text


def test_cancelled_sequence_stops_within_a_step_and_frees_its_row(engine):
    sink = Sink(cancel_after=3)
    engine.submit(GenerationRequest(prompt="The", max_tokens=200, ignore_eos=True), sink)
    output = sink.result()
    assert output.finish_reason is FinishReason.CANCELLED
    assert output.completion_tokens <= 4
    assert run(engine, [GenerationRequest(prompt="The", max_tokens=3)])[0].completion_tokens == 3
    assert engine._scheduler.running == []  # nothing leaked


def test_request_cancelled_while_queued_never_runs(demo_model_dir):
    engine = TransformersEngine(EngineConfig(model_dir=demo_model_dir, max_num_seqs=1))
    try:
        blocker = Sink()
        engine.submit(GenerationRequest(prompt="The", max_tokens=60, ignore_eos=True), blocker)
        queued = Sink(cancelled=True)
        engine.submit(GenerationRequest(prompt="The", max_tokens=60), queued)
        assert queued.result().finish_reason is FinishReason.CANCELLED
        assert queued.result().completion_tokens == 0
        assert blocker.result().completion_tokens == 60
    finally:
        engine.shutdown()


def test_request_larger_than_the_token_budget_is_rejected_at_submit(demo_model_dir):
    engine = TransformersEngine(EngineConfig(model_dir=demo_model_dir, max_batch_total_tokens=50))
    try:
        with pytest.raises(ValidationError, match="max_batch_total_tokens"):
            engine.submit(GenerationRequest(prompt="The list", max_tokens=100), Sink())
    finally:
        engine.shutdown()


def test_model_limits_come_from_the_loaded_model(engine):
    assert engine.limits.context_length == 512
    assert engine.limits.vocab_size == len(engine.tokenizer)
    assert engine.limits.max_prompt_tokens <= 511


class Recorder(EngineObserver):
    def __init__(self) -> None:
        self.queue: list[tuple[int, int]] = []
        self.rejects: list[str] = []
        self.finished: list[str] = []

    def on_queue(self, running: int, waiting: int) -> None:
        self.queue.append((running, waiting))

    def on_finish(self, output: SequenceOutput) -> None:
        self.finished.append(output.finish_reason)

    def on_reject(self, reason: str) -> None:
        self.rejects.append(reason)


def test_stream_interval_sends_the_first_piece_at_once_and_merges_the_rest(demo_model_dir):
    engine = TransformersEngine(EngineConfig(model_dir=demo_model_dir, stream_interval_ms=1000))
    try:
        sink = Sink()
        engine.submit(GenerationRequest(prompt="The list", max_tokens=20, ignore_eos=True), sink)
        output = sink.result()
        # 20 steps take far less than 1 s: the first piece, then everything else at the end.
        assert len(sink.pieces) == 2
        assert "".join(sink.pieces) == output.text and output.completion_tokens == 20
    finally:
        engine.shutdown()


def test_stream_interval_zero_hands_on_each_token_as_it_comes(engine):
    sink = Sink()
    engine.submit(GenerationRequest(prompt="The list", max_tokens=20, ignore_eos=True), sink)
    output = sink.result()
    # A token that ends inside a multi-byte character waits for the next one; no other merge.
    assert len(sink.pieces) >= 15 and "".join(sink.pieces) == output.text


def test_text_held_back_for_a_stop_string_is_streamed_when_the_length_limit_ends_it(engine):
    # "e" could start the stop string, so a text ending in "e" is held back until the end;
    # the stop string itself never occurs.
    stop = ("e\u0000",)
    for max_tokens in range(1, 40):
        sink = Sink()
        engine.submit(GenerationRequest(prompt="The list", max_tokens=max_tokens, stop=stop), sink)
        output = sink.result()
        if output.finish_reason is FinishReason.LENGTH and output.text.endswith("e"):
            assert "".join(sink.pieces) == output.text
            return
    pytest.fail("no greedy completion of 1..39 tokens ended in 'e'")


def test_engine_thread_runs_at_the_configured_priority(demo_model_dir):
    import os

    engine = TransformersEngine(EngineConfig(model_dir=demo_model_dir, engine_nice=7))
    try:
        assert os.getpriority(os.PRIO_PROCESS, engine._thread.native_id) == 7
        assert engine.describe()["engine_nice"] == 7
        assert os.getpriority(os.PRIO_PROCESS, 0) != 7  # the caller's thread is untouched
    finally:
        engine.shutdown()


def test_full_queue_refuses_at_once_with_overloaded(demo_model_dir):
    recorder = Recorder()
    engine = TransformersEngine(EngineConfig(model_dir=demo_model_dir, max_num_seqs=1, max_queue_size=2),
                    recorder)
    try:
        long = GenerationRequest(prompt="The", max_tokens=120, ignore_eos=True)
        running = GateSink()
        engine.submit(long, running)
        assert running.started.wait(30)  # it runs, holding the engine at its first token
        sinks = [running, Sink(), Sink()]
        for sink in sinks[1:]:
            engine.submit(long, sink)  # two wait
        with pytest.raises(Overloaded, match=r"at capacity \(2 requests waiting\)"):
            engine.submit(long, Sink())
        running.release.set()
        assert recorder.rejects == ["queue_full"]
        assert [s.result().finish_reason for s in sinks] == [FinishReason.LENGTH] * 3
    finally:
        engine.shutdown()


def test_request_waiting_past_the_queue_timeout_is_rejected(demo_model_dir):
    recorder = Recorder()
    engine = TransformersEngine(EngineConfig(model_dir=demo_model_dir, max_num_seqs=1, queue_timeout_s=0.2),
                    recorder)
    try:
        blocker = GateSink()  # holds the only slot (and the engine) for 0.5 s, any CPU speed
        engine.submit(GenerationRequest(prompt="The", max_tokens=250, ignore_eos=True), blocker)
        assert blocker.started.wait(30)
        late = Sink()
        engine.submit(GenerationRequest(prompt="The", max_tokens=5), late)
        threading.Timer(0.5, blocker.release.set).start()
        output = late.result()
        assert output.finish_reason is FinishReason.REJECTED and "waited more than 0.2 s" in output.error
        assert "queue_timeout" in recorder.rejects
        blocker.result()
        assert recorder.queue[-1] == (0, 0)  # gauges end at zero
    finally:
        engine.shutdown()


def test_shutdown_lets_admitted_and_queued_sequences_finish(demo_model_dir):
    engine = TransformersEngine(EngineConfig(model_dir=demo_model_dir, max_num_seqs=1))
    running, queued = Sink(), Sink()
    engine.submit(GenerationRequest(prompt="The", max_tokens=40, ignore_eos=True), running)
    engine.submit(GenerationRequest(prompt="The", max_tokens=40, ignore_eos=True), queued)
    engine.shutdown(drain_timeout=30)
    assert running.result().finish_reason is queued.result().finish_reason is FinishReason.LENGTH
    with pytest.raises(Overloaded, match="shutting down"):
        engine.submit(GenerationRequest(prompt="The", max_tokens=1), Sink())


class FirstTokenClock(Sink):
    """Notes how many pieces `clock` (a running sequence, one piece per decode step) had when
    this sequence's first piece came: the step it was prefilled in."""

    def __init__(self, clock: Sink) -> None:
        super().__init__()
        self.clock = clock
        self.first_at: int | None = None

    def on_text(self, delta: str, logprobs: Sequence[Any] = (), index: int = 0) -> None:
        if self.first_at is None:
            self.first_at = len(self.clock.pieces)
        super().on_text(delta)


def test_arrivals_beyond_the_prefill_budget_wait_a_step_so_the_first_stream_sooner(demo_model_dir):
    engine = TransformersEngine(EngineConfig(model_dir=demo_model_dir, max_num_seqs=8,
                                             stream_interval_ms=0, max_prefill_tokens=8))
    try:
        prompt = "Python is a programming language"
        assert 5 <= len(engine.tokenizer.encode(prompt)) <= 8  # one fits the budget, two do not
        running = GateSink()
        engine.submit(GenerationRequest(prompt="The", max_tokens=40, ignore_eos=True), running)
        assert running.started.wait(30)  # the engine is held: the three arrive together
        arrivals = [FirstTokenClock(running) for _ in range(3)]
        for sink in arrivals:
            engine.submit(GenerationRequest(prompt=prompt, max_tokens=4), sink)
        running.release.set()
        assert all(s.result().finish_reason is FinishReason.LENGTH for s in arrivals)
        first, second, third = (s.first_at for s in arrivals)
        assert first is not None and (second, third) == (first + 1, first + 2)
    finally:
        engine.shutdown()
