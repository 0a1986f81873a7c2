"""One test per validation rule of `textgen.validation`."""

from __future__ import annotations

import math

import numpy as np
import pytest

from textgen.core.config import Limits
from textgen.core.validation import (GenerationRequest, ValidationError, check_token_budget,
                                     parse_request)

LIMITS = Limits(max_prompt_tokens=100, max_new_tokens=50, default_max_tokens=10,
                context_length=128, vocab_size=4096)


def parse(**inputs):
    """Build tensors shaped as Triton delivers them ([1, n]) and parse them."""
    tensors = {"text_input": np.array([[b"hello"]], dtype=object)}
    for name, value in inputs.items():
        row = value if name == "stop" else [value]
        tensors[name] = np.array([row], dtype=object if name in ("stop", "text_input") else None)
    return parse_request(tensors, LIMITS)


def test_defaults_are_filled_in_from_the_limits():
    request = parse()
    assert request == GenerationRequest(prompt="hello", max_tokens=10)
    assert request.greedy


@pytest.mark.parametrize("text,message", [
    (b"", "`text_input` must not be empty"),
    (b"   \n", "`text_input` must not be empty"),
    (b"\xff\xfe", "`text_input` must be valid UTF-8"),
    (b"a\x00b", "`text_input` must not contain NUL characters"),
    (b"x" * 1601, "`text_input` must have at most 1600 characters, got 1601"),
])
def test_bad_prompt_text_is_rejected(text, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(")) as info:
        parse(text_input=text)
    assert info.value.parameter == "text_input"


def test_prompt_with_two_values_is_rejected_with_its_shape():
    with pytest.raises(ValidationError, match=r"exactly one value, got shape \[1, 2\]"):
        parse_request({"text_input": np.array([[b"a", b"b"]], dtype=object)}, LIMITS)


@pytest.mark.parametrize("value,message", [
    (0, r"`max_tokens` must be in \[1, 50\], got 0"),
    (-3, r"`max_tokens` must be in \[1, 50\], got -3"),
    (51, r"`max_tokens` must be in \[1, 50\], got 51"),
    (2.5, r"`max_tokens` must be an integer, got 2.5"),
    (True, r"`max_tokens` must be an integer"),
])
def test_max_tokens_outside_its_range_is_rejected(value, message):
    with pytest.raises(ValidationError, match=message):
        parse(max_tokens=value)


@pytest.mark.parametrize("value,message", [
    (-0.1, r"`temperature` must be in \[0, 2\], got -0.1"),
    (2.5, r"`temperature` must be in \[0, 2\], got 2.5"),
    (math.nan, r"`temperature` must be a finite number, got nan"),
    (math.inf, r"`temperature` must be a finite number, got inf"),
    ("hot", r"`temperature` must be a number"),
])
def test_temperature_outside_its_range_is_rejected(value, message):
    with pytest.raises(ValidationError, match=message):
        parse(temperature=value)


def test_top_p_zero_is_rejected_but_one_is_accepted():
    with pytest.raises(ValidationError, match=r"`top_p` must be in \(0, 1\], got 0"):
        parse(top_p=0.0)
    assert parse(top_p=1.0).top_p == 1.0


def test_top_k_beyond_the_vocabulary_is_rejected():
    with pytest.raises(ValidationError, match=r"`top_k` must be in \[0, 4096\], got 5000"):
        parse(top_k=5000)


def test_negative_seed_is_rejected():
    with pytest.raises(ValidationError, match=r"`seed` must be in \[0, "):
        parse(seed=-1)


def test_stop_strings_are_decoded_and_bounded():
    assert parse(stop=[b"\n\n", b"END"]).stop == ("\n\n", "END")
    with pytest.raises(ValidationError, match="at most 8 strings, got 9"):
        parse(stop=[b"a"] * 9)
    with pytest.raises(ValidationError, match="1 to 128 characters, got 0"):
        parse(stop=[b""])


def test_boolean_flags_must_be_booleans():
    assert parse(ignore_eos=np.bool_(True)).ignore_eos
    with pytest.raises(ValidationError, match="`ignore_eos` must be a boolean"):
        parse(ignore_eos=1)


def test_prompt_over_the_token_limit_names_both_numbers():
    with pytest.raises(ValidationError, match="has 101 tokens; the limit is 100"):
        check_token_budget(101, GenerationRequest(prompt="x", max_tokens=1), LIMITS)


def test_prompt_plus_max_tokens_over_the_context_names_all_numbers():
    with pytest.raises(ValidationError,
                       match=r"90 prompt tokens \+ 50 max_tokens = 140 > 128"):
        check_token_budget(90, GenerationRequest(prompt="x", max_tokens=50), LIMITS)
    check_token_budget(78, GenerationRequest(prompt="x", max_tokens=50), LIMITS)


@pytest.mark.parametrize("name,value,message", [
    ("presence_penalty", 2.5, "`presence_penalty` must be in [-2, 2], got 2.5"),
    ("frequency_penalty", -3.0, "`frequency_penalty` must be in [-2, 2], got -3"),
    ("repetition_penalty", 0.0, "`repetition_penalty` must be in (0, 2], got 0"),
    ("min_tokens", 11, "`min_tokens` must be in [0, 10], got 11"),  # above max_tokens (10)
    ("logit_bias", b"[1, 2]", "`logit_bias` must be a JSON object of token id -> bias"),
    ("logit_bias", b"{bad", "`logit_bias` must be a JSON object, got invalid JSON"),
    ("logit_bias", b'{"4096": 1}', "`logit_bias` keys must be token ids in [0, 4095], got '4096'"),
    ("logit_bias", b'{"-1": 1}', "`logit_bias` keys must be token ids in [0, 4095], got '-1'"),
    ("logit_bias", b'{"5": 101}', "`logit_bias` must be in [-100, 100], got 101"),
    ("logit_bias", b'{"5": "x"}', "`logit_bias` values must be numbers, got 'x'"),
])
def test_sampling_controls_outside_their_ranges_are_rejected_by_name(name, value, message):
    with pytest.raises(ValidationError) as caught:
        parse(**{name: value})
    assert str(caught.value).startswith(message)
    assert caught.value.parameter == name


def test_sampling_controls_are_parsed_with_neutral_defaults():
    assert (parse().min_tokens, parse().presence_penalty, parse().repetition_penalty,
            parse().logit_bias) == (0, 0.0, 1.0, ())
    request = parse(min_tokens=np.int32(4), presence_penalty=np.float32(0.5),
                    frequency_penalty=np.float32(-1), repetition_penalty=np.float32(1.5),
                    logit_bias=b'{"7": -100, "3": 2.5}')
    assert (request.min_tokens, request.presence_penalty, request.frequency_penalty,
            request.repetition_penalty, request.logit_bias) == (
        4, 0.5, -1.0, 1.5, ((3, 2.5), (7, -100.0)))
    assert request.penalized and not parse().penalized


@pytest.mark.parametrize("inputs,message", [
    ({"logprobs": 21}, "`logprobs` must be in [0, 20], got 21"),
    ({"logprobs": -1}, "`logprobs` must be in [0, 20], got -1"),
    ({"prompt_logprobs": 21}, "`prompt_logprobs` must be in [0, 20], got 21"),
    ({"prompt_logprobs": 1, "max_tokens": -1}, "`max_tokens` must be in [0, 50], got -1"),
])
def test_logprobs_counts_outside_their_ranges_are_rejected_by_name(inputs, message):
    with pytest.raises(ValidationError) as caught:
        parse(**inputs)
    assert str(caught.value) == message


def test_max_tokens_0_only_scores_a_prompt_that_asked_for_its_logprobs():
    assert parse(prompt_logprobs=np.int32(0), max_tokens=np.int32(0)).max_tokens == 0
    with pytest.raises(ValidationError, match=r"`max_tokens` must be in \[1, 50\], got 0"):
        parse(logprobs=np.int32(5), max_tokens=np.int32(0))
    assert (parse().logprobs, parse().prompt_logprobs) == (None, None)
    assert parse(logprobs=np.int32(0)).logprobs == 0


def test_token_id_prompts_are_one_row_of_ids_in_the_vocabulary():
    assert parse(input_ids=np.int32(7)).prompt_ids == (7,)
    tensors = {"text_input": np.array([[b"hello"]], dtype=object),
               "input_ids": np.array([[5, 0, 4095]], dtype=np.int32)}
    assert parse_request(tensors, LIMITS).prompt_ids == (5, 0, 4095)
    for ids, message in (([[4096]], "`input_ids` must be token ids in [0, 4095], got 4096"),
                         ([[1, -2]], "`input_ids` must be token ids in [0, 4095], got -2"),
                         (np.zeros((1, 0)), "`input_ids` must be integers, got float64"),
                         (np.zeros((1, 0), dtype=np.int32), "`input_ids` must not be empty"),
                         ([[1], [2]], "`input_ids` must be one row of token ids, got shape "
                                      "[2, 1]")):
        with pytest.raises(ValidationError) as caught:
            parse_request({**tensors, "input_ids": np.asarray(ids)}, LIMITS)
        assert str(caught.value) == message
    assert parse().prompt_ids == ()
