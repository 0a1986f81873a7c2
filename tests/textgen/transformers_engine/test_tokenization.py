"""Incremental detokenisation and stop strings, with the demo model's byte-level tokenizer."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from textgen.transformers_engine.tokenization import TextAssembler, fast_decoder


@pytest.fixture(scope="module")
def tokenizer(demo_model_dir):
    return AutoTokenizer.from_pretrained(demo_model_dir)


def feed(assembler: TextAssembler, ids: list[int]) -> list[str]:
    return [assembler.add(i) for i in ids]


def test_streamed_pieces_concatenate_to_the_decoded_text(tokenizer):
    text = "The list module provides functions, and 42 more!"
    assembler = TextAssembler(fast_decoder(tokenizer))
    pieces = feed(assembler, tokenizer.encode(text)) + [assembler.flush()]
    assert "".join(pieces) == text == assembler.text


def test_multibyte_characters_are_never_split(tokenizer):
    text = "caf\u00e9 \u2603 \U0001f600 na\u00efve"
    ids = tokenizer.encode(text)
    assert len(ids) > len(text.split())  # emoji and accents span several byte tokens
    assembler = TextAssembler(fast_decoder(tokenizer))
    pieces = feed(assembler, ids)
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) + assembler.flush() == text


def test_text_stops_right_before_the_stop_string(tokenizer):
    assembler = TextAssembler(fast_decoder(tokenizer), stop=["module"])
    pieces = feed(assembler, tokenizer.encode("The list module provides"))
    assert assembler.stopped
    assert "".join(pieces) == assembler.text == "The list "


def test_a_possible_stop_prefix_is_held_back_until_it_resolves(tokenizer):
    assembler = TextAssembler(fast_decoder(tokenizer), stop=["\n\nEND"])
    released = "".join(feed(assembler, tokenizer.encode("one\n\nEN")))
    assert released == "one"  # "\n\nEN" might become the stop string
    released += "".join(feed(assembler, tokenizer.encode("VY, no")))
    assert not assembler.stopped
    assert released + assembler.flush() == "one\n\nENVY, no"


def test_stop_string_spanning_tokens_is_found(tokenizer):
    assembler = TextAssembler(fast_decoder(tokenizer), stop=["st mod"])
    feed(assembler, tokenizer.encode("The list module"))
    assert assembler.stopped and assembler.text == "The li"


def test_fast_decoder_gives_what_the_tokenizer_itself_decodes(tokenizer):
    ids = tokenizer.encode("caf\u00e9 \U0001f600 The list module") + [tokenizer.eos_token_id]
    assert fast_decoder(tokenizer)(ids) == tokenizer.decode(ids, skip_special_tokens=True)


def test_stop_strings_count_only_once_min_tokens_were_generated(tokenizer):
    ids = tokenizer.encode("The list module provides a module")
    early = TextAssembler(fast_decoder(tokenizer), stop=["module"], min_tokens=len(ids) - 1)
    pieces = feed(early, ids)
    assert early.stopped  # the second "module" came after min_tokens
    assert "".join(pieces) == early.text == "The list module provides a "
