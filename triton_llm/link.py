"""A local link to the engine, for the token-streaming entry point `llm_stream`.

Why it exists: Triton runs every model in its own process, and the weights must be loaded
once. The engine lives in `llm` (which answers unary calls directly); `llm_stream`, the
decoupled model that streams tokens, reaches the same engine over a Unix socket in the
abstract namespace, named after the Triton server process. Triton's own model-to-model calls
(BLS) hung under concurrent load on this server (docs/performance.md, Figures behind design
choices), so this link is plain `multiprocessing.connection`. Only processes of the same user
may connect (checked with SO_PEERCRED).

One connection per `llm_stream` process carries all of its requests, each under an id the
stream side picks, and the engine side writes everything its decode step produced for that
connection as one message (`Outputs`): a token costs neither a connection, nor a thread, nor
a socket write of its own. The messages are typed records defined once in `link_messages.py`.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import socket
import struct
import threading
import time
from multiprocessing.connection import Client, Connection, Listener
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from contracts.errors import ErrorType
from contracts.logprobs import TokenLogprobs
from textgen.core.outputs import OutputSink, SequenceOutput
from triton_llm.link_messages import (Adapters, Cancel, Finished, FromEngine, Generate,
                                      ManageAdapters, Outputs, Refused, Text, ToEngine)

log = logging.getLogger("textgen.link")

# submit(inputs, meta, sink): validate and queue, or raise LinkRefusal.
SubmitFn = Callable[[Mapping[str, Any], Mapping[str, str], OutputSink], None]
# manage(command): carry out an adapter command and return the list after it, or raise
# LinkRefusal.
ManageFn = Callable[[ManageAdapters], Adapters]

ENGINE_GONE = "the generation engine went away; retry later"


class LinkRefusal(Exception):
    """Raised by the submit function to refuse a request before it runs."""

    def __init__(self, kind: ErrorType, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def engine_address(server_pid: int) -> str:
    """The socket of the engine serving Triton process `server_pid` (abstract namespace)."""
    return f"\0llm-engine-{server_pid}"


def merged(items: list[tuple[int, FromEngine]]) -> list[tuple[int, FromEngine]]:
    """`items` with each sequence's consecutive text pieces joined, order otherwise kept.

    Why: when a writer or reader fell behind, the pieces that queued up go on as one, so a
    slow moment never builds a backlog (as vLLM's output collector merges deltas)."""
    out: list[tuple[int, FromEngine]] = []
    # (request id, sequence) -> index in `out` of its text still open; any other message of
    # the request closes all of them, so nothing moves past it
    open_text: dict[tuple[int, int], int] = {}
    for request_id, message in items:
        at = open_text.get((request_id, message.index)) if isinstance(message, Text) else None
        if isinstance(message, Text) and at is not None:
            previous = out[at][1]
            assert isinstance(previous, Text)
            out[at] = (request_id, Text(previous.delta + message.delta,
                                        previous.logprobs + message.logprobs, message.index))
            continue
        if isinstance(message, Text):
            open_text[(request_id, message.index)] = len(out)
        else:
            open_text = {key: at for key, at in open_text.items() if key[0] != request_id}
        out.append((request_id, message))
    return out


# ---- the engine side (in `llm`'s process) -------------------------------------------------

class _Channel:
    """One stream-side connection on the engine side: its requests' sinks by id."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.sinks: dict[int, _RequestSink] = {}
        self.dead = False

    def hang_up(self) -> None:
        """The stream side is gone: every request it carried counts as cancelled (each sink
        asks its channel)."""
        self.dead = True


class _RequestSink:
    """OutputSink of one request (all of its `choices` sequences); queues its messages for
    the sender thread."""

    def __init__(self, channel: _Channel, request_id: int, sender: "_Sender",
                 choices: int = 1) -> None:
        self._channel = channel
        self._id = request_id
        self._sender = sender
        self._open = choices
        self.cancelled = False

    def on_text(self, delta: str, logprobs: Sequence[TokenLogprobs] = (),
                index: int = 0) -> None:
        self._sender.send(self._channel, self._id, Text(delta, tuple(logprobs), index))

    def on_finish(self, output: SequenceOutput) -> None:
        self._open -= 1
        if not self._open:  # a cancellation reaches every sequence until the last ends
            self._channel.sinks.pop(self._id, None)
        self._sender.send(self._channel, self._id, Finished(output))

    def refuse(self, kind: ErrorType, message: str) -> None:
        self._channel.sinks.pop(self._id, None)
        self._sender.send(self._channel, self._id, Refused(kind, message))

    def is_cancelled(self) -> bool:
        return self.cancelled or self._channel.dead


class _Sender:
    """The one thread that writes engine -> stream messages.

    Why: a socket write that wakes the reader costs tens of microseconds; on the engine thread
    that stalled every decode step, so the engine only queues. Whatever queued up by the time
    this thread runs (normally a decode step's worth, for every sequence) goes to each
    connection as one `Outputs` write."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Optional[tuple[_Channel, int, FromEngine]]] \
            = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="engine-link-sender", daemon=True)
        self._thread.start()

    def send(self, channel: _Channel, request_id: int, message: FromEngine) -> None:
        self._queue.put((channel, request_id, message))

    def close(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            pending = [self._queue.get()]
            while True:
                try:
                    pending.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            by_channel: dict[_Channel, list[tuple[int, FromEngine]]] = {}
            for item in pending:
                if item is not None:
                    channel, request_id, message = item
                    by_channel.setdefault(channel, []).append((request_id, message))
            for channel, items in by_channel.items():
                if not channel.dead:
                    try:
                        channel.conn.send(Outputs(tuple(merged(items))))
                    except OSError:
                        channel.hang_up()
            if None in pending:
                return


class EngineLinkServer:
    """Accepts stream-side connections and hands their requests to `submit`."""

    def __init__(self, address: str, submit: SubmitFn,
                 manage: Optional[ManageFn] = None) -> None:
        self._address = address
        self._closed = False
        self._listener = Listener(address, family="AF_UNIX")
        self._submit = submit
        self._manage = manage
        self._sender = _Sender()
        self._channels: list[_Channel] = []
        self._thread = threading.Thread(target=self._accept, name="engine-link", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop accepting and hang up on every stream side (they answer their open requests
        with an `unavailable` error)."""
        self._closed = True
        try:  # wake the accept loop, which then closes the listener and frees the address
            Client(self._address, family="AF_UNIX").close()
        except OSError:
            pass
        self._thread.join(5)
        for channel in list(self._channels):
            channel.hang_up()
            _shut_down(channel.conn)
        self._sender.close()

    def _accept(self) -> None:
        while True:
            try:
                conn = self._listener.accept()
            except OSError:
                log.exception("the engine link stopped accepting connections")
                return
            if self._closed:
                conn.close()
                self._listener.close()
                return
            if not _same_user(conn):
                log.warning("refused an engine-link connection from another user")
                conn.close()
                continue
            channel = _Channel(conn)
            self._channels.append(channel)
            threading.Thread(target=self._serve, args=(channel,), name="engine-link-reader",
                             daemon=True).start()

    def _serve(self, channel: _Channel) -> None:
        """Read one stream side's requests and cancellations until it hangs up."""
        try:
            while True:
                message: ToEngine = channel.conn.recv()
                if isinstance(message, Cancel):
                    sink = channel.sinks.get(message.request_id)
                    if sink is not None:
                        sink.cancelled = True
                    continue
                if isinstance(message, ManageAdapters):
                    self._sender.send(channel, message.request_id, self._managed(message))
                    continue
                sink = _RequestSink(channel, message.request_id, self._sender, message.choices)
                channel.sinks[message.request_id] = sink
                try:
                    self._submit(message.inputs, message.meta, sink)
                except LinkRefusal as exc:
                    sink.refuse(exc.kind, str(exc))
                except Exception as exc:  # one bad request must not hang up on its neighbours
                    log.exception("submitting a streamed request failed")
                    sink.refuse(ErrorType.INTERNAL, f"the request could not be queued: {exc}")
        except (EOFError, OSError):
            pass  # the stream side went away (or the server closed)
        finally:
            channel.hang_up()
            self._channels.remove(channel)
            channel.conn.close()


    def _managed(self, command: ManageAdapters) -> FromEngine:
        """An adapter command's answer: the list after it, or why it was refused."""
        try:
            if self._manage is None:
                raise LinkRefusal(ErrorType.INVALID_REQUEST, "this engine takes no adapter "
                                  "commands")
            return self._manage(command)
        except LinkRefusal as exc:
            return Refused(exc.kind, str(exc))
        except Exception as exc:  # a failed command must not hang up on the requests beside it
            log.exception("adapter command %s failed", command.action)
            return Refused(ErrorType.INTERNAL, f"the adapter command failed: {exc}")


def _same_user(conn: Connection) -> bool:
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    finally:
        sock.close()
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid == os.getuid()


def _shut_down(conn: Connection) -> None:
    """Wake a reader blocked in recv on another thread (a plain close would not)."""
    if conn.closed:
        return
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the other side already hung up


# ---- the stream side (in `llm_stream`'s process) ------------------------------------------

class EngineClient:
    """The stream side of the link: one connection, shared by every request of this process.

    A reader thread hands each request's messages to that request's queue; the threads that
    relay requests to Triton read only their own queue. Connects on first use (waiting while
    `llm` is still loading) and again after the engine went away."""

    def __init__(self, address: str, connect_timeout: float = 30.0) -> None:
        self._address = address
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()  # guards the connection, its sends and `_queues`
        self._conn: Optional[Connection] = None
        # request id -> (the connection it was sent on, its messages)
        self._queues: dict[int, tuple[Connection, queue.SimpleQueue[FromEngine]]] = {}
        self._ids = itertools.count(1)

    def stream(self, inputs: Mapping[str, Any], meta: Mapping[str, str],
               is_cancelled: Callable[[], bool], choices: int = 1,
               poll_seconds: float = 0.02) -> Iterator[FromEngine]:
        """Send one request and yield the engine's messages: Text ..., then a Finished for
        each of its `choices` sequences, or one Refused.

        Text that queued up is yielded merged. `is_cancelled` is asked every `poll_seconds`;
        when it turns true the engine is told, and the sequence ends with finish reason
        "cancelled" within one decode step. Raises LinkRefusal when no engine answers.
        """
        request_id = next(self._ids)
        messages: queue.SimpleQueue[FromEngine] = queue.SimpleQueue()
        with self._lock:
            conn = self._connected()
            self._queues[request_id] = (conn, messages)
            _send_or_lose(conn, Generate(request_id, dict(inputs), dict(meta), choices))
        ended = told = False
        open_choices = choices
        try:
            next_check = time.monotonic() + poll_seconds
            while True:
                # Ask about cancellation on a clock, not only when idle: a fast token stream
                # always has a message waiting.
                if not told and time.monotonic() >= next_check:
                    next_check = time.monotonic() + poll_seconds
                    if is_cancelled():
                        self._cancel(request_id)
                        told = True
                try:
                    first = messages.get(timeout=poll_seconds)
                except queue.Empty:
                    continue
                for message in _drained(first, messages):
                    if isinstance(message, Finished):
                        open_choices -= 1
                    ended = isinstance(message, Refused) or not open_choices
                    yield message
                    if ended:
                        return
        finally:
            with self._lock:
                self._queues.pop(request_id, None)
            if not ended and not told:
                self._cancel(request_id)  # the relay stopped early: free the sequence

    def manage(self, action: str, name: str = "", path: str = "",
               timeout: float = 120.0) -> Adapters:
        """Send one adapter command and return the served list after it; raises LinkRefusal
        with the engine's reason when it refused."""
        request_id = next(self._ids)
        messages: queue.SimpleQueue[FromEngine] = queue.SimpleQueue()
        with self._lock:
            conn = self._connected()
            self._queues[request_id] = (conn, messages)
            _send_or_lose(conn, ManageAdapters(request_id, action, name, path))
        try:
            reply = messages.get(timeout=timeout)
        except queue.Empty:
            raise LinkRefusal(ErrorType.UNAVAILABLE, "the engine did not answer the adapter "
                              f"command within {timeout:.0f} s") from None
        finally:
            with self._lock:
                self._queues.pop(request_id, None)
        if isinstance(reply, Refused):
            raise LinkRefusal(reply.kind, reply.message)
        assert isinstance(reply, Adapters)
        return reply

    def _connected(self) -> Connection:
        """The live connection (called with `_lock` held), connecting when there is none."""
        if self._conn is not None:
            return self._conn
        deadline = time.monotonic() + self._connect_timeout
        while True:
            try:
                self._conn = Client(self._address, family="AF_UNIX")
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise LinkRefusal(ErrorType.UNAVAILABLE, "the generation engine (model "
                                      "`llm`) is not running; retry later") from None
                time.sleep(0.2)
        threading.Thread(target=self._read, args=(self._conn,), name="engine-link-reader",
                         daemon=True).start()
        return self._conn

    def _cancel(self, request_id: int) -> None:
        with self._lock:
            if self._conn is not None:
                _send_or_lose(self._conn, Cancel(request_id))

    def _read(self, conn: Connection) -> None:
        """Deliver every message of `conn` to its request until the engine side hangs up;
        then every request still open ends with an `unavailable` refusal."""
        try:
            while True:
                batch: Outputs = conn.recv()
                for request_id, message in batch.items:
                    entry = self._queues.get(request_id)
                    if entry is not None:  # else: its relay already stopped
                        entry[1].put(message)
        except (EOFError, OSError):
            pass
        with self._lock:
            if self._conn is conn:
                self._conn = None
            orphans = [messages for sent_on, messages in self._queues.values() if sent_on is conn]
        for messages in orphans:
            messages.put(Refused(ErrorType.UNAVAILABLE, ENGINE_GONE))
        conn.close()


def _send_or_lose(conn: Connection, message: ToEngine) -> None:
    """Send; a broken connection is reported by the reader thread, to every request on it."""
    try:
        conn.send(message)
    except OSError:
        _shut_down(conn)


def _drained(first: FromEngine, messages: queue.SimpleQueue[FromEngine]) -> list[FromEngine]:
    """`first` and every message already queued behind it, consecutive text merged.

    Why: each response the stream side sends is a round trip to Triton's server process, so
    when the engine is ahead the text of several decode steps would wait here one response at
    a time and the client would fall behind. Merging only what is already waiting never delays
    a token: when the stream keeps up, each message still goes out alone."""
    waiting = [first]
    while not isinstance(waiting[-1], Refused):  # nothing follows a refusal
        try:
            waiting.append(messages.get_nowait())
        except queue.Empty:
            break
    return [message for _, message in merged([(0, message) for message in waiting])]
