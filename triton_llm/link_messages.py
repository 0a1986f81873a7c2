"""The messages of the engine link (`link.py`), defined once and imported by both ends.

`llm_stream` (the stream side) and `llm` (the engine side) run in different processes and
exchange these over one Unix socket per stream-side process, pickled. Every request on it has
an id the stream side chose:

  stream -> engine   Generate(id), then Cancel(id) if the client goes away
  engine -> stream   Outputs: what the engine produced since its last write, for any number
                     of requests; per request, Text ... then Finished once per sequence (n,
                     `choices`), or one Refused

`llm_adapters` (the operator's adapter commands) uses the same link: ManageAdapters(id), then
one Adapters (the served list after the command) or one Refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Union

from contracts.errors import ErrorType
from contracts.logprobs import TokenLogprobs
from textgen.core.outputs import SequenceOutput


@dataclass(frozen=True, slots=True)
class Generate:
    """Start a generation: the request's tensors by input name, and its ids for the log."""

    request_id: int
    inputs: Mapping[str, Any]
    meta: Mapping[str, str]
    choices: int = 1  # its sequences (`n`): each ends with its own Finished


@dataclass(frozen=True, slots=True)
class Cancel:
    """The client went away: drop the sequence at the next decode step."""

    request_id: int


@dataclass(frozen=True, slots=True)
class Text:
    """New text of the sequence (pieces that queued up may arrive merged, never reordered),
    and the logprobs of the tokens behind it when the request asked for them."""

    delta: str
    logprobs: tuple[TokenLogprobs, ...] = ()
    index: int = 0  # which of the request's sequences


@dataclass(frozen=True, slots=True)
class Finished:
    """The sequence ended (finish reason, token counts and timings in `output`)."""

    output: SequenceOutput


@dataclass(frozen=True, slots=True)
class Refused:
    """The request never ran or could not go on: why, and the message for the client."""

    kind: ErrorType
    message: str


@dataclass(frozen=True, slots=True)
class ManageAdapters:
    """List, load or unload LoRA adapters (contracts.adapters.AdapterAction's values)."""

    request_id: int
    action: str
    name: str = ""
    path: str = ""


@dataclass(frozen=True, slots=True)
class Adapters:
    """The adapters served after a command: (name, directory, resident) by name."""

    served: tuple[tuple[str, str, bool], ...]
    max_loras: int


FromEngine = Union[Text, Finished, Refused, Adapters]


@dataclass(frozen=True, slots=True)
class Outputs:
    """One write of the engine side: (request id, message) pairs in the order produced.

    Why a batch: at 32 streams a decode step yields 32 pieces of text; one pickle and one
    socket write for all of them costs the engine's process a fraction of 32 of each."""

    items: tuple[tuple[int, FromEngine], ...]


ToEngine = Union[Generate, Cancel, ManageAdapters]
