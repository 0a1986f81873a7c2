"""A local link to the engine, for the token-streaming entry point `llm_stream`.

Why it exists: Triton runs every model in its own process, and the weights must be loaded
once. The engine lives in `llm` (which answers unary calls directly); `llm_stream`, the
decoupled model that streams tokens, reaches the same engine over a Unix socket in the
abstract namespace, named after the Triton server process. Triton's own model-to-model calls
(BLS) hung under concurrent load on this server (see the README), so this link is plain
`multiprocessing.connection` with one connection per request. Only processes of the same
user may connect (checked with SO_PEERCRED).

The messages are typed records defined once in `link_messages.py`.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import struct
import threading
import time
from multiprocessing.connection import Client, Connection, Listener
from typing import Any, Callable, Iterator, Mapping, Optional

from .errors import ErrorKind
from .link_messages import (Cancel, Finished, FromEngine, Generate, Refused, Text,
                            ToEngine)
from .outputs import OutputSink, SequenceOutput

log = logging.getLogger("textgen.link")

# submit(inputs, meta, sink): validate and queue, or raise LinkRefusal.
SubmitFn = Callable[[Mapping[str, Any], Mapping[str, str], OutputSink], None]


class LinkRefusal(Exception):
    """Raised by the submit function to refuse a request before it runs."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def engine_address(server_pid: int) -> str:
    """The socket of the engine serving Triton process `server_pid` (abstract namespace)."""
    return f"\0llm-engine-{server_pid}"


class _Close:
    """Internal to the engine side: close the connection once what was queued is written."""


_CLOSE = _Close()


class _Sender:
    """One thread that writes every engine -> stream message.

    Why: a socket write that wakes the reader costs tens of microseconds, paid per token per
    sequence; on the engine thread that stalled every decode step. The engine only queues.
    When the writer falls behind, consecutive text pieces for one sequence go out as one
    message (as vLLM's output collector merges them), so a slow moment never builds a backlog.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Optional[tuple[_ConnectionSink, FromEngine | _Close]]] \
            = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="engine-link-sender", daemon=True)
        self._thread.start()

    def send(self, sink: "_ConnectionSink", message: FromEngine | _Close) -> None:
        self._queue.put((sink, message))

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
            self._deliver([item for item in pending if item is not None])
            if None in pending:
                return

    @staticmethod
    def _deliver(pending: list[Any]) -> None:
        by_sink: dict[_ConnectionSink, list[FromEngine | _Close]] = {}
        for sink, message in pending:
            messages = by_sink.setdefault(sink, [])
            last = messages[-1] if messages else None
            if isinstance(message, Text) and isinstance(last, Text):
                messages[-1] = Text(last.delta + message.delta)
            else:
                messages.append(message)
        for sink, messages in by_sink.items():
            for message in messages:
                sink.write(message)


class _ConnectionSink:
    """OutputSink that forwards to the stream side; the client leaving counts as cancel."""

    def __init__(self, conn: Connection, sender: _Sender) -> None:
        self._conn = conn
        self._sender = sender
        self._cancelled = threading.Event()

    def on_text(self, delta: str) -> None:
        self._sender.send(self, Text(delta))

    def on_finish(self, output: SequenceOutput) -> None:
        self._sender.send(self, Finished(output))

    def close(self) -> None:
        """Close the connection after everything queued for it was written."""
        self._sender.send(self, _CLOSE)

    def write(self, message: FromEngine | _Close) -> None:
        """On the sender's thread, the only one that writes to or closes the connection."""
        if message is _CLOSE:
            if not self._conn.closed:
                # Shut the socket down first: that wakes a reader blocked in recv on another
                # thread (a plain close would not), and the stream side sees the end at once.
                with socket.socket(fileno=os.dup(self._conn.fileno())) as sock:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass  # the stream side already hung up
                self._conn.close()
            return
        try:
            self._conn.send(message)
        except OSError:  # the stream side is gone; after Finished nobody listens any more
            self._cancelled.set()

    def is_cancelled(self) -> bool:
        return self._cancelled.is_set()

    def watch_for_cancel(self) -> None:
        """Block until the stream side closes its end (runs on the connection's thread).

        Cancel marks the sequence cancelled but keeps the connection open, so the engine's
        Finished still arrives."""
        try:
            while True:
                if isinstance(self._conn.recv(), Cancel):
                    self._cancelled.set()
        except (EOFError, OSError):
            self._cancelled.set()


class EngineLinkServer:
    """Accepts stream requests and hands them to `submit`; a thread per open request."""

    def __init__(self, address: str, submit: SubmitFn) -> None:
        self._listener = Listener(address, family="AF_UNIX")
        self._submit = submit
        self._sender = _Sender()
        self._thread = threading.Thread(target=self._accept, name="engine-link", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._listener.close()
        self._sender.close()

    def _accept(self) -> None:
        while True:
            try:
                conn = self._listener.accept()
            except OSError:
                return  # closed
            if not _same_user(conn):
                log.warning("refused an engine-link connection from another user")
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: Connection) -> None:
        sink = _ConnectionSink(conn, self._sender)
        try:
            request: ToEngine = conn.recv()
            if not isinstance(request, Generate):
                return  # a stream side that cancelled before it asked for anything
            try:
                self._submit(request.inputs, request.meta, sink)
            except LinkRefusal as exc:
                conn.send(Refused(exc.kind, str(exc)))
                return
            sink.watch_for_cancel()
        except (EOFError, OSError):
            pass  # the stream side left before sending a request
        finally:
            # The stream side closes its end after the final message, which ends
            # watch_for_cancel; a late send from the engine then fails quietly.
            sink.close()


def _same_user(conn: Connection) -> bool:
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    finally:
        sock.close()
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid == os.getuid()


def stream_from_engine(address: str, inputs: Mapping[str, Any], meta: Mapping[str, str],
                       is_cancelled: Callable[[], bool], connect_timeout: float = 30.0,
                       poll_seconds: float = 0.02) -> Iterator[FromEngine]:
    """Send one request and yield the engine's messages: Text ..., then Finished or Refused.

    `is_cancelled` is polled every `poll_seconds` while waiting; when it turns true the engine
    is told, and the sequence ends with finish reason "cancelled" within one decode step.
    """
    conn = _connect(address, connect_timeout)
    try:
        conn.send(Generate(dict(inputs), dict(meta)))
        told = False
        next_check = time.monotonic() + poll_seconds
        while True:
            # Ask about cancellation on a clock, not only when idle: a fast token stream
            # always has a message waiting.
            if not told and time.monotonic() >= next_check:
                next_check = time.monotonic() + poll_seconds
                if is_cancelled():
                    conn.send(Cancel())
                    told = True
            if conn.poll(poll_seconds):
                for message in _coalesced(conn):
                    yield message
                    if not isinstance(message, Text):
                        return
    except (EOFError, OSError):
        yield Refused(ErrorKind.UNAVAILABLE, "the generation engine went away; retry later")
    finally:
        conn.close()


def _coalesced(conn: Connection) -> list[FromEngine]:
    """The message waiting on `conn` and every one already behind it, consecutive text merged.

    Why: each response the stream side sends is a round trip to Triton's server process that
    blocks its sender, so when the engine is ahead the text of several decode steps would
    queue up here one response at a time, the client would fall behind the engine, and the
    engine would run out of sequences. Merging only what is already waiting never delays a
    token: when the stream keeps up, each message still goes out alone (as vLLM's output
    processor merges the deltas a slow client has not taken yet)."""
    messages: list[FromEngine] = [conn.recv()]
    while isinstance(messages[-1], Text) and conn.poll(0):
        try:
            message: FromEngine = conn.recv()
        except (EOFError, OSError):
            break  # the engine went away: deliver what came, the next read reports it
        if isinstance(message, Text) and isinstance(messages[-1], Text):
            messages[-1] = Text(messages[-1].delta + message.delta)
        else:
            messages.append(message)
    return messages


def _connect(address: str, timeout: float) -> Connection:
    """Connect, waiting for the engine while `llm` is still loading."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return Client(address, family="AF_UNIX")
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise LinkRefusal(ErrorKind.UNAVAILABLE, "the generation engine (model `llm`) "
                                                         "is not running; retry later") from None
            time.sleep(0.2)
