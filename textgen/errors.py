"""Why a request failed, as data: the error types the model sets on its error responses.

Each value is an error `type` of the gateway's contract (gateway/error_contract.py, which gives its
HTTP status and gRPC code; tests/unit/test_error_contract.py keeps the two in step). Why the
type travels inside the message: Triton's generate endpoints answer every model error with
HTTP 400 and a body of `{"error": "<message>"}`, so the message is the only field that reaches
the gateway. `wire_message` writes it as `<type>: <message>`, and gateway/error_contract.lua
reads the type back to set the status (a full queue is a 503, not a 400) and the body.
"""

from __future__ import annotations

from enum import Enum


class ErrorKind(str, Enum):
    INVALID_REQUEST = "invalid_request"  # the client's mistake (400, Triton INVALID_ARG)
    OVERLOADED = "overloaded"            # queue full or waited too long: retry (503)
    UNAVAILABLE = "unavailable"          # the engine is gone or not up yet: retry (503)
    INTERNAL = "internal"                # generation failed on the server's side (500)


def wire_message(kind: ErrorKind, message: str) -> str:
    """The text of an error response: the type first, for the gateway to read."""
    return f"{kind.value}: {message}"
