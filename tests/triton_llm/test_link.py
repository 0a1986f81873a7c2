"""The engine link between `llm_stream` and the engine, over a real Unix socket."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import replace
from typing import Any, Mapping

import numpy as np
import pytest

from contracts.errors import ErrorType
from textgen.core.outputs import FinishReason, OutputSink, SequenceOutput
from triton_llm.link import EngineClient, EngineLinkServer, LinkRefusal, _drained, merged
from triton_llm.link_messages import Finished, Refused, Text

DONE = SequenceOutput(text="ab", finish_reason=FinishReason.LENGTH, prompt_tokens=1, completion_tokens=2,
                      queue_seconds=0, first_token_seconds=0, total_seconds=0)


def serve(submit) -> tuple[EngineLinkServer, EngineClient]:
    address = f"\0llm-engine-test-{time.time_ns()}"
    return EngineLinkServer(address, submit), EngineClient(address)


def never() -> bool:
    return False


def test_text_then_finished_arrive_in_order_pieces_merged_at_most():
    def submit(inputs: Mapping[str, Any], meta: Mapping[str, str], sink: OutputSink) -> None:
        assert inputs["text_input"].tolist() == [[b"hi"]] and meta == {"request_id": "r1"}
        sink.on_text("a")
        sink.on_text("b")
        sink.on_finish(DONE)

    _, client = serve(submit)
    messages = list(client.stream({"text_input": np.array([[b"hi"]])}, {"request_id": "r1"},
                                  never))
    # Pieces queued faster than the sender writes may arrive merged, never reordered.
    assert messages[-1] == Finished(DONE)
    assert all(isinstance(message, Text) for message in messages[:-1])
    assert "".join(message.delta for message in messages[:-1]) == "ab"


def test_a_request_of_n_sequences_ends_after_the_last_and_is_cancellable_until_then():
    """Each sequence's end is delivered; the stream ends with the last one, and a
    cancellation still reaches the engine after the first ended."""
    sinks: list[OutputSink] = []
    first_ended = threading.Event()

    def submit(inputs: Mapping[str, Any], meta: Mapping[str, str], sink: OutputSink) -> None:
        sinks.append(sink)

        def produce() -> None:
            sink.on_text("a", index=0)
            sink.on_text("b", index=1)
            sink.on_finish(replace(DONE, index=0))
            first_ended.wait(5)
            deadline = time.monotonic() + 5
            while not sink.is_cancelled() and time.monotonic() < deadline:
                time.sleep(0.01)
            sink.on_finish(replace(DONE, index=1, finish_reason=FinishReason.CANCELLED))
        threading.Thread(target=produce, daemon=True).start()

    _, client = serve(submit)
    cancelled = threading.Event()
    messages = []
    for message in client.stream({}, {}, cancelled.is_set, choices=2):
        messages.append(message)
        if isinstance(message, Finished):
            first_ended.set()
            cancelled.set()  # the client leaves after the first sequence ended
    ends = [m.output for m in messages if isinstance(m, Finished)]
    assert [(o.index, o.finish_reason) for o in ends] == [
        (0, FinishReason.LENGTH), (1, FinishReason.CANCELLED)]
    assert {(m.delta, m.index) for m in messages if isinstance(m, Text)} == {("a", 0), ("b", 1)}


def test_concurrent_requests_share_one_connection_and_each_gets_only_its_own_text():
    def submit(inputs: Mapping[str, Any], meta: Mapping[str, str], sink: OutputSink) -> None:
        def produce() -> None:
            for piece in meta["request_id"]:
                sink.on_text(piece)
                time.sleep(0.001)
            sink.on_finish(DONE)
        threading.Thread(target=produce, daemon=True).start()

    server, client = serve(submit)
    texts: dict[str, str] = {}

    def relay(name: str) -> None:
        messages = list(client.stream({}, {"request_id": name}, never))
        assert messages[-1] == Finished(DONE)
        texts[name] = "".join(m.delta for m in messages[:-1] if isinstance(m, Text))

    names = [f"request-{i}-" + "x" * i for i in range(16)]
    threads = [threading.Thread(target=relay, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert texts == {name: name for name in names}
    assert len(server._channels) == 1  # one stream-side process, one connection


def test_each_write_carries_every_request_and_merges_each_ones_consecutive_text():
    """One engine-side write per batch of outputs: pieces of one request that queued up
    are joined, a request's end is never merged into its text, order per request is kept."""
    items = [(1, Text("a")), (2, Text("x")), (1, Text("b")), (2, Finished(DONE)),
             (1, Text("c")), (3, Text("p"))]
    assert merged(items) == [(1, Text("abc")), (2, Text("x")), (2, Finished(DONE)),
                             (3, Text("p"))]
    assert merged([(1, Text("a")), (1, Finished(DONE)), (1, Text("late"))]) == \
        [(1, Text("a")), (1, Finished(DONE)), (1, Text("late"))]


def test_text_waiting_on_the_stream_side_goes_out_as_one_message_and_nothing_waits_for_more():
    """The stream side merges what already queued up behind a piece (one Triton response
    instead of several) but never holds a piece back to wait for the next."""
    waiting: queue.SimpleQueue = queue.SimpleQueue()
    assert _drained(Text("a"), waiting) == [Text("a")]  # alone: sent at once
    for message in (Text("c"), Finished(DONE), Text("d", index=1),
                    Refused(ErrorType.INTERNAL, "x"), Text("late")):
        waiting.put(message)
    # One sequence's end does not stop it (a request's others may go on: `n`); a refusal does.
    assert _drained(Text("b"), waiting) == [Text("bc"), Finished(DONE), Text("d", index=1),
                                            Refused(ErrorType.INTERNAL, "x")]


def test_the_sequences_of_one_request_are_merged_each_on_its_own():
    items = [(1, Text("a")), (1, Text("x", index=1)), (1, Text("b")), (1, Text("y", index=1)),
             (1, Finished(DONE)), (1, Text("z", index=1))]
    assert merged(items) == [(1, Text("ab")), (1, Text("xy", index=1)), (1, Finished(DONE)),
                             (1, Text("z", index=1))]


def test_refusal_reaches_the_stream_side_with_its_kind():
    def submit(inputs: Any, meta: Any, sink: OutputSink) -> None:
        raise LinkRefusal(ErrorType.INVALID_REQUEST, "`top_p` must be in (0, 1], got 2")

    _, client = serve(submit)
    messages = list(client.stream({}, {}, never))
    assert messages == [Refused(ErrorType.INVALID_REQUEST, "`top_p` must be in (0, 1], got 2")]


def test_a_request_that_breaks_submit_is_refused_and_its_neighbours_go_on():
    def submit(inputs: Any, meta: Any, sink: OutputSink) -> None:
        if meta.get("bad"):
            raise KeyError("text_input")
        sink.on_finish(DONE)

    _, client = serve(submit)
    refused = list(client.stream({}, {"bad": "1"}, never))
    assert len(refused) == 1 and refused[0].kind is ErrorType.INTERNAL
    assert list(client.stream({}, {}, never)) == [Finished(DONE)]


def text_until_cancelled(stopped: threading.Event, finish: bool):
    """A submit function whose sequence makes text until it is cancelled, then sets `stopped`
    (and ends with Finished when `finish`), as the engine does within a decode step."""
    def submit(inputs: Any, meta: Any, sink: OutputSink) -> None:
        def produce() -> None:
            while not sink.is_cancelled():
                sink.on_text("x")
                time.sleep(0.01)
            stopped.set()
            if finish:
                sink.on_finish(DONE)
        threading.Thread(target=produce, daemon=True).start()
    return submit


def test_cancel_on_the_stream_side_is_seen_by_the_engine_side():
    seen = threading.Event()
    _, client = serve(text_until_cancelled(seen, finish=True))
    cancel_after = time.monotonic() + 0.1
    messages = list(client.stream({}, {}, lambda: time.monotonic() > cancel_after))
    assert seen.wait(5)
    assert messages[-1] == Finished(DONE)


def test_a_relay_that_stops_reading_early_frees_its_sequence():
    """Triton failed to send, say: closing the stream tells the engine without waiting."""
    stopped = threading.Event()
    _, client = serve(text_until_cancelled(stopped, finish=False))
    stream = client.stream({}, {}, never)
    assert isinstance(next(stream), Text)
    stream.close()
    assert stopped.wait(5)


def test_connecting_to_a_missing_engine_fails_with_a_clear_refusal():
    client = EngineClient("\0llm-engine-nobody", connect_timeout=0.3)
    with pytest.raises(LinkRefusal, match="model `llm`"):
        list(client.stream({}, {}, never))


def test_engine_going_away_mid_stream_ends_with_an_unavailable_error_and_a_new_engine_serves():
    address = f"\0llm-engine-test-{time.time_ns()}"
    started = threading.Event()

    def submit(inputs: Any, meta: Any, sink: OutputSink) -> None:
        sink.on_text("a")
        started.set()  # ... and never finishes: the engine process dies under it

    server = EngineLinkServer(address, submit)
    client = EngineClient(address, connect_timeout=5)
    stream = client.stream({}, {}, never)
    assert next(stream) == Text("a")
    assert started.wait(5)
    server.close()
    rest = list(stream)
    assert len(rest) == 1 and isinstance(rest[0], Refused)
    assert rest[0].kind is ErrorType.UNAVAILABLE

    def finish(inputs: Any, meta: Any, sink: OutputSink) -> None:
        sink.on_finish(DONE)

    EngineLinkServer(address, finish)  # Triton restarted `llm`: the same address again
    assert list(client.stream({}, {}, never)) == [Finished(DONE)]


def test_an_adapter_command_is_answered_beside_running_streams_and_refusals_keep_their_kind():
    from triton_llm.link_messages import Adapters, ManageAdapters

    seen: list[ManageAdapters] = []

    def manage(command: ManageAdapters) -> Adapters:
        seen.append(command)
        if command.name == "missing":
            raise LinkRefusal(ErrorType.NOT_FOUND, "'missing' is not served here")
        return Adapters((("a", "/adapters/a", True),), 4)

    def submit(inputs: Mapping[str, Any], meta: Mapping[str, str], sink: OutputSink) -> None:
        sink.on_text("x")
        sink.on_finish(DONE)

    address = f"\0llm-engine-test-{time.time_ns()}"
    EngineLinkServer(address, submit, manage)
    client = EngineClient(address)
    assert client.manage("load", "a", "/adapters/a") == Adapters((("a", "/adapters/a", True),), 4)
    assert seen == [ManageAdapters(seen[0].request_id, "load", "a", "/adapters/a")]
    assert [type(m).__name__ for m in client.stream({}, {}, never)] == ["Text", "Finished"]
    with pytest.raises(LinkRefusal, match="'missing' is not served") as refused:
        client.manage("unload", "missing")
    assert refused.value.kind is ErrorType.NOT_FOUND


def test_an_engine_without_adapter_commands_refuses_them():
    _, client = serve(lambda *_: None)
    with pytest.raises(LinkRefusal, match="takes no adapter commands"):
        client.manage("list")
