"""Text <-> tokens, including incremental decoding and stop strings.

Why incremental: streamed text must never split a multi-byte character and must never show the
start of a stop string that later completes, so each sequence owns a `TextAssembler` that
releases only text that is final.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer the engine uses."""

    eos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


def fast_decoder(tokenizer: Tokenizer) -> Callable[[Sequence[int]], str]:
    """`decode(ids)` without special tokens, straight from the Rust tokenizer when there is one.

    Why: the assembler decodes twice per generated token, and transformers' Python wrapper
    costs several times the decoding itself. It is bypassed only when it would change nothing
    (no clean-up of tokenization spaces)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return lambda ids: backend.decode(list(ids), skip_special_tokens=True)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


class TokenTexts(list):
    """Each token's text alone, for logprobs, indexed by token id: decoded once, at load, for
    the whole vocabulary (special tokens shown, as vLLM shows them; part of a character as
    U+FFFD; ids the tokenizer does not know, in a padded embedding, as "").

    Why a list made at load: a step names up to (1 + top) tokens per row, and an index into a
    list is the cheapest lookup Python has; decoding them as they come cost a visible share of
    a small model's step."""

    def __init__(self, tokenizer: Tokenizer, size: int) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        known = min(size, len(tokenizer))  # type: ignore[arg-type]
        ids = [[token_id] for token_id in range(known)]
        if backend is not None:
            texts = backend.decode_batch(ids, skip_special_tokens=False)
        else:
            texts = [tokenizer.decode(i, skip_special_tokens=False) for i in ids]
        super().__init__(list(texts) + [""] * (size - known))


class TextAssembler:
    """Detokenise one sequence token by token and apply its stop strings.

    Decoding uses a sliding window of recent tokens (as TGI does) so each step costs the
    same however long the text grows.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = (),
                 min_tokens: int = 0) -> None:
        self._decode = decode  # see fast_decoder
        self._stop = tuple(stop)
        self._min_tokens = min_tokens  # stop strings count only from this many tokens on
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self.text = ""  # all completed text so far, stop string excluded once found
        self._released = 0  # characters of `text` already handed out
        self.stopped = False

    def _decode_delta(self) -> str:
        window = self._ids[self._prefix_offset:]
        prefix_text = self._decode(self._ids[self._prefix_offset:self._read_offset])
        full_text = self._decode(window)
        if len(full_text) <= len(prefix_text) or full_text.endswith("\ufffd"):
            return ""  # an incomplete multi-byte character: wait for the next token
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return full_text[len(prefix_text):]

    def _held_back(self) -> int:
        """Length of the longest tail of `text` that could still grow into a stop string."""
        if len(self._ids) < self._min_tokens:
            return 0
        longest = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def add(self, token_id: int) -> str:
        """Append a token; return the text that became final (maybe empty).

        After a stop string was found nothing more is released.
        """
        if self.stopped:
            return ""
        self._ids.append(token_id)
        delta = self._decode_delta()
        if not delta:
            return ""
        search_from = max(0, len(self.text) - max((len(s) for s in self._stop), default=0))
        self.text += delta
        hits = [i for i in (self.text.find(s, search_from) for s in self._stop) if i >= 0] \
            if len(self._ids) >= self._min_tokens else []
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True
            return self.flush()
        return self._release(len(self.text) - self._held_back())

    def flush(self) -> str:
        """Release everything left, e.g. when the sequence ends for another reason."""
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        out = self.text[self._released:upto]
        self._released = max(self._released, upto)
        return out
