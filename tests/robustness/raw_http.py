"""Raw HTTP/1.1 over a socket, for requests no HTTP library agrees to send.

Conflicting `Content-Length` / `Transfer-Encoding`, broken header syntax and clients that never
finish their headers all need bytes on the wire exactly as written.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class RawReply:
    """What came back on one connection: the first final answer, or nothing."""

    status: Optional[int]  # None: the connection closed (or timed out) without an answer
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    seconds: float = 0.0
    timed_out: bool = False

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def _read_until(sock: socket.socket, buffer: bytearray, marker: bytes) -> bool:
    while marker not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            return False
        buffer += chunk
    return True


def _read_body(sock: socket.socket, buffer: bytearray, headers: dict[str, str]) -> bytes:
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(buffer) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer += chunk
        return bytes(buffer[:length])
    if "chunked" in headers.get("transfer-encoding", ""):
        _read_until(sock, buffer, b"0\r\n\r\n")
        body, rest = b"", bytes(buffer)
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            body, rest = body + rest[:size], rest[size + 2:]
        return body
    while True:  # no framing: the body ends when the connection does
        chunk = sock.recv(65536)
        if not chunk:
            return bytes(buffer)
        buffer += chunk


def exchange(host: str, port: int, data: bytes, timeout: float = 10.0) -> RawReply:
    """Send `data` on a fresh connection and read the first non-1xx answer."""
    start = time.monotonic()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            buffer = bytearray()
            while True:
                if not _read_until(sock, buffer, b"\r\n\r\n"):
                    return RawReply(None, seconds=time.monotonic() - start)
                head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                status = int(lines[0].split(" ")[1])
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                buffer = bytearray(rest)
                if 100 <= status < 200:
                    continue  # 100 Continue: the real answer follows
                body = _read_body(sock, buffer, headers)
                return RawReply(status, headers, body, time.monotonic() - start)
        except socket.timeout:
            return RawReply(None, seconds=time.monotonic() - start, timed_out=True)
        except ConnectionError:
            return RawReply(None, seconds=time.monotonic() - start)


def request(method: str, path: str, headers: dict[str, str], body: bytes = b"",
            version: str = "HTTP/1.1") -> bytes:
    """Bytes of a well-formed request, as a starting point for breaking it."""
    lines = [f"{method} {path} {version}", "Host: gateway"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
