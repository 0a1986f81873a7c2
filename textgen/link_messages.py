"""The messages of the engine link (`link.py`), defined once and imported by both ends.

`llm_stream` (the stream side) and `llm` (the engine side) run in different processes and
exchange these over a Unix socket, pickled. One request is one connection:

  stream -> engine   Generate, then Cancel if the client goes away
  engine -> stream   Text ... then exactly one of Finished | Refused
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Union

from .errors import ErrorKind
from .outputs import SequenceOutput


@dataclass(frozen=True, slots=True)
class Generate:
    """Start a generation: the request's tensors by input name, and its ids for the log."""

    inputs: Mapping[str, Any]
    meta: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Cancel:
    """The client went away: drop the sequence at the next decode step."""


@dataclass(frozen=True, slots=True)
class Text:
    """New text of the sequence (pieces that queued up may arrive merged, never reordered)."""

    delta: str


@dataclass(frozen=True, slots=True)
class Finished:
    """The sequence ended (finish reason, token counts and timings in `output`)."""

    output: SequenceOutput


@dataclass(frozen=True, slots=True)
class Refused:
    """The request never ran or could not go on: why, and the message for the client."""

    kind: ErrorKind
    message: str


ToEngine = Union[Generate, Cancel]
FromEngine = Union[Text, Finished, Refused]
