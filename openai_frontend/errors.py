"""Errors of the /v1 routes, in OpenAI's shape, from the gateway's one error contract.

Statuses and OpenAI types come from contracts/errors.py (`OPENAI`), which also gives the
gateway's own /v1 answers (401, 403, 429, ...) the same shape, so a client sees one shape
whoever answered. `code` is the contract's error type (`overloaded`, `invalid_request`, ...).
"""

from __future__ import annotations

import json
import re
from typing import Optional

from contracts.errors import OPENAI, ErrorType

# The model writes its error messages as `<type>: <message>` (contracts/errors.py).
_MODEL_MESSAGE = re.compile(r"^([a-z_]+): (.*)$", re.S)
# Its validation messages start with the offending input: "`top_p` must be in ...".
_PARAM = re.compile(r"^`([a-z_]+)`")


class OpenAIError(Exception):
    """A failed /v1 request: becomes the status and body the `openai` SDKs understand."""

    def __init__(self, kind: ErrorType, message: str, param: Optional[str] = None) -> None:
        super().__init__(message)
        self.kind, self.message, self.param = kind, message, param

    @property
    def status(self) -> int:
        return OPENAI[self.kind][0]

    def body(self) -> dict[str, dict[str, Optional[str]]]:
        return {"error": {"message": self.message, "type": OPENAI[self.kind][1],
                          "param": self.param, "code": self.kind.value}}

    def json(self) -> bytes:
        return json.dumps(self.body()).encode()

    def headers(self) -> dict[str, str]:
        """429 and 503 say when to come back."""
        return {"retry-after": "1"} if self.status in (429, 503) else {}


def invalid(message: str, param: Optional[str] = None) -> OpenAIError:
    return OpenAIError(ErrorType.INVALID_REQUEST, message, param)


def from_model(message: str, rename: Optional[dict[str, str]] = None) -> OpenAIError:
    """An error the model answered with: its type leads its message. `rename` maps the
    model's input names back to the OpenAI parameter the client sent."""
    match = _MODEL_MESSAGE.match(message)
    try:
        kind = ErrorType(match.group(1)) if match else ErrorType.INTERNAL
        text = match.group(2) if match else message
    except ValueError:  # not one of ours: report it whole
        kind, text = ErrorType.INTERNAL, message
    param = None
    if kind is ErrorType.INVALID_REQUEST:
        found = _PARAM.match(text)
        param = found.group(1) if found else None
        param = (rename or {}).get(param or "", param)
    return OpenAIError(kind, text, param)
