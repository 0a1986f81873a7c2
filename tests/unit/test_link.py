"""The engine link between `llm_stream` and the engine, over a real Unix socket."""

from __future__ import annotations

import threading
import time
from typing import Any, Mapping

import numpy as np
import pytest

from textgen.errors import ErrorKind
from textgen.link import EngineLinkServer, LinkRefusal, stream_from_engine
from textgen.link_messages import Finished, Refused, Text
from textgen.outputs import FinishReason, OutputSink, SequenceOutput

DONE = SequenceOutput(text="ab", finish_reason=FinishReason.LENGTH, prompt_tokens=1, completion_tokens=2,
                      queue_seconds=0, first_token_seconds=0, total_seconds=0)


def serve(submit) -> str:
    address = f"\0llm-engine-test-{time.time_ns()}"
    EngineLinkServer(address, submit)
    return address


def test_text_then_finished_arrive_in_order_pieces_merged_at_most():
    def submit(inputs: Mapping[str, Any], meta: Mapping[str, str], sink: OutputSink) -> None:
        assert inputs["text_input"].tolist() == [[b"hi"]] and meta == {"request_id": "r1"}
        sink.on_text("a")
        sink.on_text("b")
        sink.on_finish(DONE)

    messages = list(stream_from_engine(serve(submit), {"text_input": np.array([[b"hi"]])},
                                       {"request_id": "r1"}, lambda: False))
    # Pieces queued faster than the sender writes may arrive merged, never reordered.
    assert messages[-1] == Finished(DONE)
    assert all(isinstance(message, Text) for message in messages[:-1])
    assert "".join(message.delta for message in messages[:-1]) == "ab"


def test_text_waiting_on_the_link_goes_out_as_one_message_and_nothing_waits_for_more():
    """The stream side merges what already queued up behind a piece (one Triton response
    instead of several) but never holds a piece back to wait for the next."""
    from multiprocessing import Pipe

    from textgen.link import _coalesced

    engine_end, stream_end = Pipe()
    engine_end.send(Text("a"))
    assert _coalesced(stream_end) == [Text("a")]  # alone: sent at once
    for message in (Text("b"), Text("c"), Finished(DONE), Text("late")):
        engine_end.send(message)
    assert _coalesced(stream_end) == [Text("bc"), Finished(DONE)]  # stops at the end


def test_refusal_reaches_the_stream_side_with_its_kind():
    def submit(inputs: Any, meta: Any, sink: OutputSink) -> None:
        raise LinkRefusal(ErrorKind.INVALID_REQUEST, "`top_p` must be in (0, 1], got 2")

    messages = list(stream_from_engine(serve(submit), {}, {}, lambda: False))
    assert messages == [Refused(ErrorKind.INVALID_REQUEST, "`top_p` must be in (0, 1], got 2")]


def test_cancel_on_the_stream_side_is_seen_by_the_engine_side():
    seen = threading.Event()

    def submit(inputs: Any, meta: Any, sink: OutputSink) -> None:
        def produce() -> None:
            while not sink.is_cancelled():
                sink.on_text("x")
                time.sleep(0.01)
            seen.set()
            sink.on_finish(DONE)
        threading.Thread(target=produce, daemon=True).start()

    cancel_after = time.monotonic() + 0.1
    messages = list(stream_from_engine(serve(submit), {}, {},
                                       lambda: time.monotonic() > cancel_after))
    assert seen.wait(5)
    assert messages[-1] == Finished(DONE)


def test_connecting_to_a_missing_engine_fails_with_a_clear_refusal():
    with pytest.raises(LinkRefusal, match="model `llm`"):
        list(stream_from_engine("\0llm-engine-nobody", {}, {}, lambda: False,
                                connect_timeout=0.3))


def test_engine_going_away_mid_stream_ends_with_an_unavailable_error():
    def submit(inputs: Any, meta: Any, sink: OutputSink) -> None:
        sink.on_text("a")
        sink.close()  # what a crashed engine process looks like from the stream side

    messages = list(stream_from_engine(serve(submit), {}, {}, lambda: False))
    assert messages[0] == Text("a")
    assert isinstance(messages[-1], Refused) and messages[-1].kind is ErrorKind.UNAVAILABLE
