"""OpenAI response bodies and server-sent-event chunks.

Why strings and not model objects: a streamed answer sends one chunk per token, so each chunk
is a precomputed head plus the JSON-encoded text (one `json.dumps` of a short string), with no
per-chunk object building or validation. Whole (non-streamed) answers are built once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from contracts.logprobs import Candidate, TokenLogprobs

from .triton import Final

DONE = b"data: [DONE]\n\n"


def usage(finals: Sequence[Final]) -> dict[str, int]:
    """A request's usage: its prompt once, the tokens of all its sequences (`n`)."""
    prompt = finals[0].prompt_tokens
    completion = sum(final.completion_tokens for final in finals)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def timing(finals: Sequence[Final]) -> dict[str, float]:
    """`llm_timing` of a whole answer (an extension field OpenAI's SDKs keep in
    `model_extra`): the first sequence's queue and prefill, which its `n` sequences share,
    and the longest decode. The gateway's access log reads it (gateway/usage.lua)."""
    if not finals[0].timing_ms:
        return {}
    whole = dict(finals[0].timing_ms)
    whole["decode_ms"] = max(f.timing_ms.get("decode_ms", 0.0) for f in finals)
    return whole


@dataclass(frozen=True)
class Choice:
    """One whole sequence of an answer: its text, its end, its logprobs in the API's shape."""

    text: str
    final: Final
    logprobs: Optional[dict[str, Any]] = None


def event(body: Any) -> bytes:
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def completion_logprobs(entries: Sequence[Optional[TokenLogprobs]], offset: int = 0,
                        first_token: str = "") -> dict[str, Any]:
    """Completions' shape (vLLM's): parallel lists, `top_logprobs` a token -> logprob
    object holding the top tokens and the chosen one, `text_offset` where each token's text
    starts in the choice's text (from `offset`). A None entry is a prompt's first token,
    whose text is `first_token`, with null logprobs."""
    tokens: list[str] = []
    values: list[Optional[float]] = []
    tops: list[Optional[dict[str, float]]] = []
    offsets: list[int] = []
    for entry in entries:
        offsets.append(offset)
        if entry is None:
            tokens.append(first_token)
            values.append(None)
            tops.append(None)
            offset += len(first_token)
            continue
        tokens.append(entry.chosen.token)
        values.append(entry.chosen.logprob)
        top = {c.token: c.logprob for c in entry.top}
        top.setdefault(entry.chosen.token, entry.chosen.logprob)
        tops.append(top)
        offset += len(entry.chosen.token)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops,
            "text_offset": offsets}


def _chat_token(candidate: Candidate) -> dict[str, Any]:
    return {"token": candidate.token, "logprob": candidate.logprob,
            "bytes": list(candidate.token.encode("utf-8"))}


def chat_logprobs(entries: Sequence[TokenLogprobs]) -> dict[str, Any]:
    """Chat's shape: one object per generated token, with its `top_logprobs`."""
    return {"content": [{**_chat_token(e.chosen), "top_logprobs": [_chat_token(c)
                                                                   for c in e.top]}
                        for e in entries]}


class ChunkWriter:
    """The chunks of one streamed answer: `chat.completion.chunk` or `text_completion`."""

    def __init__(self, chat: bool, response_id: str, created: int, model: str,
                 include_usage: bool, with_logprobs: bool = False, offset: int = 0,
                 choices: int = 1) -> None:
        """`with_logprobs`: each chunk carries its tokens' logprobs; `offset`: where the
        completion's text starts in each choice's (after an echoed prompt); `choices`: `n`."""
        self._chat = chat
        self._with_logprobs = with_logprobs
        self._offsets = [offset] * choices
        self.choices = choices
        kind = "chat.completion.chunk" if chat else "text_completion"
        self._envelope = {"id": response_id, "object": kind, "created": created, "model": model}
        # With include_usage every chunk but the last carries "usage": null, as OpenAI's do.
        tail = ',"usage":null}\n\n' if include_usage else "}\n\n"
        head = json.dumps(self._envelope, separators=(",", ":"))[:-1]
        if chat:
            self._text = (f'data: {head},"choices":[{{"index":%d,"delta":{{"content":%s}},'
                          f'"logprobs":null,"finish_reason":null}}]{tail}')
        else:
            self._text = (f'data: {head},"choices":[{{"index":%d,"text":%s,'
                          f'"logprobs":null,"finish_reason":null}}]{tail}')
        self._include_usage = include_usage

    def first(self) -> bytes:
        """Chat answers open with the assistant's role (OpenAI's first delta), per choice."""
        if not self._chat:
            return b""
        return b"".join(self._choice({"role": "assistant", "content": ""}, None, index=i)
                        for i in range(self.choices))

    def text(self, piece: str, logprobs: Sequence[TokenLogprobs] = (), index: int = 0) -> bytes:
        if not self._with_logprobs:
            return (self._text % (index, json.dumps(piece))).encode()
        if self._chat:
            return self._choice({"content": piece}, None, chat_logprobs(logprobs), index)
        shaped = completion_logprobs(logprobs, self._offsets[index])
        self._offsets[index] += sum(len(e.chosen.token) for e in logprobs)
        return self._choice(piece, None, shaped, index)

    def finish(self, final: Final, ended: Sequence[Final] = ()) -> bytes:
        """A choice's finish reason, in its own chunk, with where its time went (`llm_timing`).
        The last choice's (`ended`: every choice's end) also carries the answer's usage as
        `llm_usage` when no usage chunk follows, so the gateway counts a stream's tokens
        whether or not the client asked for them."""
        extra: dict[str, Any] = {"llm_timing": final.timing_ms} if final.timing_ms else {}
        if ended and not self._include_usage:
            extra["llm_usage"] = usage(ended)
        return self._choice({} if self._chat else "", final.finish_reason, index=final.index,
                            extra=extra)

    def end(self, finals: Sequence[Final]) -> bytes:
        """After the last choice: the usage chunk, when it was asked for."""
        if not self._include_usage:
            return b""
        return event({**self._envelope, "choices": [], "usage": usage(finals)})

    def _choice(self, delta: Any, finish_reason: Any, logprobs: Any = None,
                index: int = 0, extra: Optional[dict[str, Any]] = None) -> bytes:
        choice = ({"index": index, "delta": delta} if self._chat
                  else {"index": index, "text": delta})
        choice.update(logprobs=logprobs, finish_reason=finish_reason)
        body = {**self._envelope, "choices": [choice]}
        if self._include_usage:
            body["usage"] = None
        body.update(extra or {})
        return event(body)


def completion(response_id: str, created: int, model: str,
               choices: Sequence[Choice]) -> dict[str, Any]:
    return _with_timing({
        "id": response_id, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": i, "text": c.text, "logprobs": c.logprobs,
                     "finish_reason": c.final.finish_reason} for i, c in enumerate(choices)],
        "usage": usage([c.final for c in choices])}, choices)


def chat_completion(response_id: str, created: int, model: str,
                    choices: Sequence[Choice]) -> dict[str, Any]:
    return _with_timing({
        "id": response_id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": i, "message": {"role": "assistant", "content": c.text},
                     "logprobs": c.logprobs, "finish_reason": c.final.finish_reason}
                    for i, c in enumerate(choices)],
        "usage": usage([c.final for c in choices])}, choices)


def _with_timing(body: dict[str, Any], choices: Sequence[Choice]) -> dict[str, Any]:
    whole = timing([c.final for c in choices])
    if whole:
        body["llm_timing"] = whole
    return body
