"""OpenAI response bodies and server-sent-event chunks.

Why strings and not model objects: a streamed answer sends one chunk per token, so each chunk
is a precomputed head plus the JSON-encoded text (one `json.dumps` of a short string), with no
per-chunk object building or validation. Whole (non-streamed) answers are built once.
"""

from __future__ import annotations

import json
from typing import Any

from .triton import Final

DONE = b"data: [DONE]\n\n"


def usage(final: Final) -> dict[str, int]:
    return {"prompt_tokens": final.prompt_tokens, "completion_tokens": final.completion_tokens,
            "total_tokens": final.prompt_tokens + final.completion_tokens}


def event(body: Any) -> bytes:
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


class ChunkWriter:
    """The chunks of one streamed answer: `chat.completion.chunk` or `text_completion`."""

    def __init__(self, chat: bool, response_id: str, created: int, model: str,
                 include_usage: bool) -> None:
        self._chat = chat
        kind = "chat.completion.chunk" if chat else "text_completion"
        self._envelope = {"id": response_id, "object": kind, "created": created, "model": model}
        # With include_usage every chunk but the last carries "usage": null, as OpenAI's do.
        tail = ',"usage":null}\n\n' if include_usage else "}\n\n"
        head = json.dumps(self._envelope, separators=(",", ":"))[:-1]
        if chat:
            self._text = (f'data: {head},"choices":[{{"index":0,"delta":{{"content":%s}},'
                          f'"logprobs":null,"finish_reason":null}}]{tail}')
        else:
            self._text = (f'data: {head},"choices":[{{"index":0,"text":%s,'
                          f'"logprobs":null,"finish_reason":null}}]{tail}')
        self._include_usage = include_usage

    def first(self) -> bytes:
        """Chat answers open with the assistant's role (OpenAI's first delta)."""
        if not self._chat:
            return b""
        return self._choice({"role": "assistant", "content": ""}, None)

    def text(self, piece: str) -> bytes:
        return (self._text % json.dumps(piece)).encode()

    def finish(self, final: Final) -> bytes:
        """The finish reason (its own chunk), then the usage chunk when it was asked for."""
        chunk = self._choice({} if self._chat else "", final.finish_reason)
        if self._include_usage:
            chunk += event({**self._envelope, "choices": [], "usage": usage(final)})
        return chunk

    def _choice(self, delta: Any, finish_reason: Any) -> bytes:
        choice = {"index": 0, "delta": delta} if self._chat else {"index": 0, "text": delta}
        choice.update(logprobs=None, finish_reason=finish_reason)
        body = {**self._envelope, "choices": [choice]}
        if self._include_usage:
            body["usage"] = None
        return event(body)


def completion(response_id: str, created: int, model: str, text: str,
               final: Final) -> dict[str, Any]:
    return {"id": response_id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None,
                         "finish_reason": final.finish_reason}],
            "usage": usage(final)}


def chat_completion(response_id: str, created: int, model: str, text: str,
                    final: Final) -> dict[str, Any]:
    return {"id": response_id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": final.finish_reason}],
            "usage": usage(final)}
