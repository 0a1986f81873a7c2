"""The OpenAI frontend's pure parts: request parsing, error mapping, chunk building."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import AsyncIterator

import pytest

from contracts.errors import OPENAI, ErrorType
from contracts.logprobs import Candidate, TokenLogprobs
from openai_frontend import responses
from openai_frontend.app import _stream
from openai_frontend.errors import OpenAIError, from_model
from openai_frontend.protocol import parse_chat, parse_completion
from openai_frontend.served_model import ServedModel
from openai_frontend.triton import Final, Piece, model_inputs

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _refused(parse, body) -> OpenAIError:
    with pytest.raises(OpenAIError) as info:
        parse(body)
    return info.value


def test_defaults_are_openais_and_the_models():
    request = parse_chat(CHAT)
    assert request.sampling.temperature == 1.0
    assert request.sampling.max_tokens is None  # the model's default_max_tokens, never 16
    assert not request.stream and not request.include_usage


def test_max_completion_tokens_wins_over_max_tokens():
    assert parse_chat({**CHAT, "max_tokens": 9, "max_completion_tokens": 3}
                      ).sampling.max_tokens == 3
    assert parse_chat({**CHAT, "max_tokens": 9}).sampling.max_tokens == 9


def test_vllm_extras_and_stop_forms_are_read():
    request = parse_completion({"model": "m", "prompt": "p", "top_k": -1, "ignore_eos": True,
                                "stop": "x", "seed": 3})
    assert request.sampling.top_k is None  # -1 means off
    assert request.sampling.ignore_eos and request.sampling.stop == ("x",)
    assert parse_completion({"model": "m", "prompt": "p", "stop": ["a", "b"]}
                            ).sampling.stop == ("a", "b")


def test_unknown_fields_are_ignored():
    assert parse_chat({**CHAT, "user": "u", "metadata": {"a": 1}, "store": False}).model == "m"


@pytest.mark.parametrize("field,value", [
    ("best_of", 2), ("tools", [{"type": "function"}]),
    ("response_format", {"type": "json_object"})])
def test_unimplemented_parameters_are_refused_by_name(field, value):
    error = _refused(parse_chat, {**CHAT, field: value})
    assert (error.status, error.param) == (400, field)


@pytest.mark.parametrize("field,value", [("n", 1), ("logprobs", False), ("tools", []),
                                         ("response_format", {"type": "text"})])
def test_their_neutral_values_are_accepted(field, value):
    parse_chat({**CHAT, field: value})


@pytest.mark.parametrize("body,param", [
    ({**CHAT, "max_tokens": 0}, "max_tokens"),
    ({**CHAT, "max_tokens": True}, "max_tokens"),
    ({**CHAT, "temperature": "hot"}, "temperature"),
    ({**CHAT, "seed": -1}, "seed"),
    ({**CHAT, "stop": [1]}, "stop"),
    ({**CHAT, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": [{"content": "x"}]}, "messages[0]"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[0].content"),
    ({"messages": CHAT["messages"]}, "model"),
])
def test_malformed_chat_requests_name_the_parameter(body, param):
    assert _refused(parse_chat, body).param == param


def test_completions_take_one_string_or_token_id_prompt_and_refuse_suffix():
    assert parse_completion({"model": "m", "prompt": ["one"]}).prompt == "one"
    assert parse_completion({"model": "m", "prompt": [5, 9]}).prompt_ids == (5, 9)
    assert parse_completion({"model": "m", "prompt": [[5, 9]]}).prompt_ids == (5, 9)
    for prompt in (["a", "b"], [[1], [2]], [], [True], [1.5], [[]]):
        assert _refused(parse_completion, {"model": "m", "prompt": prompt}).param == "prompt"
    assert _refused(parse_completion, {"model": "m", "prompt": "a", "suffix": "z"}
                    ).param == "suffix"


def test_text_parts_are_joined():
    body = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}
    assert parse_chat(body).messages[0]["content"] == "ab"


@pytest.mark.parametrize("message,kind,status,param", [
    ("invalid_request: `top_p` must be in (0, 1], got 2", ErrorType.INVALID_REQUEST, 400,
     "top_p"),
    ("invalid_request: `text_input` must not be empty", ErrorType.INVALID_REQUEST, 400,
     "prompt"),
    ("overloaded: the server is at capacity (1 requests waiting); retry later",
     ErrorType.OVERLOADED, 429, None),
    ("unavailable: the generation engine went away; retry later", ErrorType.UNAVAILABLE, 503,
     None),
    ("Stub process 'llm_stream_0_0' is not healthy.", ErrorType.INTERNAL, 500, None),
])
def test_model_errors_map_to_openai_statuses_and_params(message, kind, status, param):
    error = from_model(message, {"text_input": "prompt"})
    assert (error.kind, error.status, error.param) == (kind, status, param)
    body = error.body()["error"]
    assert body["type"] == OPENAI[kind][1] and body["code"] == kind.value
    assert error.headers() == ({"retry-after": "1"} if status in (429, 503) else {})


def test_chat_chunks_are_valid_json_with_the_role_first_and_usage_last():
    final = Final("length", 3, 2)
    writer = responses.ChunkWriter(True, "chatcmpl-1", 7, "m", include_usage=True)
    events = [writer.first(), writer.text('a "quoted"\n piece'), writer.finish(final),
              writer.end([final])]
    chunks = [json.loads(line[6:]) for blob in events for line in blob.decode().split("\n\n")
              if line]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[1]["choices"][0]["delta"]["content"] == 'a "quoted"\n piece'
    assert chunks[2]["choices"][0]["finish_reason"] == "length"
    assert chunks[3]["choices"] == [] and chunks[3]["usage"]["total_tokens"] == 5
    assert [c["usage"] for c in chunks[:3]] == [None, None, None]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}


def test_completion_chunks_carry_text_and_no_usage_unless_asked():
    writer = responses.ChunkWriter(False, "cmpl-1", 7, "m", include_usage=False)
    assert writer.first() == b""
    chunk = json.loads(writer.text("x").decode()[6:])
    assert chunk["object"] == "text_completion" and chunk["choices"][0]["text"] == "x"
    assert "usage" not in chunk


def test_an_error_after_the_stream_started_is_a_final_error_event():
    async def events() -> AsyncIterator[object]:
        yield Piece("more")
        raise OpenAIError(ErrorType.UNAVAILABLE, "the model server went away")

    async def body() -> bytes:
        writer = responses.ChunkWriter(True, "c", 1, "m", include_usage=False)
        return b"".join([part async for part in _stream(writer, "", Piece("first"),
                                                        events(), lambda tokens: None)])

    text = asyncio.run(body()).decode()
    blocks = [b for b in text.split("\n\n") if b]
    assert blocks[-1] == "data: [DONE]"
    error = json.loads(blocks[-2][6:])["error"]
    assert error["code"] == "unavailable" and error["type"] == "server_error"


def test_a_model_without_a_chat_template_is_a_clear_400(demo_model_dir):
    model = ServedModel.load(demo_model_dir)
    assert "Assistant: " in model.chat_prompt([{"role": "user", "content": "hi"}])
    model.tokenizer.chat_template = None
    error = pytest.raises(OpenAIError, model.chat_prompt, [{"role": "user", "content": "x"}])
    assert error.value.status == 400 and "no chat template" in error.value.message
    assert replace(model, id="x").card()["max_model_len"] == 512


def test_sampling_controls_reach_the_model_under_their_input_names_and_datatypes():
    request = parse_completion({"model": "m", "prompt": "hi", "min_tokens": 2,
                                "presence_penalty": 0.5, "frequency_penalty": -1,
                                "repetition_penalty": 1.2, "logit_bias": {"5": -100}})
    tensors = {t.name(): t for t in model_inputs(request.prompt, request.sampling, False)}
    assert {name: tensors[name].datatype() for name in (
        "min_tokens", "presence_penalty", "frequency_penalty", "repetition_penalty",
        "logit_bias")} == {"min_tokens": "INT32", "presence_penalty": "FP32",
                           "frequency_penalty": "FP32", "repetition_penalty": "FP32",
                           "logit_bias": "BYTES"}
    assert "top_p" not in tensors  # unset fields are the model's defaults


@pytest.mark.parametrize("value", [[1, 2], "5:1", 3])
def test_a_logit_bias_that_is_not_an_object_is_refused_by_name(value):
    error = _refused(parse_completion, {"model": "m", "prompt": "hi", "logit_bias": value})
    assert (error.status, error.param) == (400, "logit_bias")


def test_tokenize_takes_a_prompt_or_messages_with_vllms_defaults():
    from openai_frontend.protocol import parse_tokenize

    prompt = parse_tokenize({"model": "m", "prompt": "hi"})
    assert (prompt.prompt, prompt.add_special_tokens, prompt.return_token_strs) == (
        "hi", True, False)
    chat = parse_tokenize({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                           "add_generation_prompt": False})
    assert (chat.messages, chat.add_special_tokens, chat.add_generation_prompt) == (
        ({"role": "user", "content": "hi"},), False, False)
    for body in ({"model": "m"}, {"model": "m", "prompt": "a", "messages": []},
                 {"model": "m", "prompt": 3}):
        assert _refused(parse_tokenize, body).param == "prompt"


def test_detokenize_refuses_ids_outside_the_vocabulary_by_name():
    from openai_frontend.protocol import parse_detokenize

    assert parse_detokenize({"model": "m", "tokens": [0, 5]}, 6) == ("m", [0, 5])
    for tokens in ([6], [-1], [True], "0 1", None):
        with pytest.raises(OpenAIError) as info:
            parse_detokenize({"model": "m", "tokens": tokens}, 6)
        assert info.value.param == "tokens"


def test_logprobs_are_asked_of_the_model_as_each_api_names_them():
    chat = parse_chat({**CHAT, "logprobs": True, "top_logprobs": 3})
    assert (chat.sampling.logprobs, chat.sampling.prompt_logprobs) == (3, None)
    assert parse_chat({**CHAT, "logprobs": True}).sampling.logprobs == 0
    assert parse_chat({**CHAT, "logprobs": False}).sampling.logprobs is None
    assert _refused(parse_chat, {**CHAT, "top_logprobs": 2}).param == "top_logprobs"
    assert _refused(parse_chat, {**CHAT, "logprobs": True, "top_logprobs": 21}
                    ).param == "top_logprobs"
    plain = {"model": "m", "prompt": "p"}
    completion = parse_completion({**plain, "logprobs": 2})
    assert (completion.sampling.logprobs, completion.sampling.prompt_logprobs) == (2, None)
    echoed = parse_completion({**plain, "logprobs": 1, "echo": True, "max_tokens": 0})
    assert (echoed.sampling.logprobs, echoed.sampling.prompt_logprobs,
            echoed.sampling.max_tokens) == (1, 1, 0)
    # max_tokens 0 only with echo, where the model scores the prompt that it returns
    assert parse_completion({**plain, "echo": True, "max_tokens": 0}
                            ).sampling.prompt_logprobs == 0
    assert _refused(parse_completion, {**plain, "max_tokens": 0}).param == "max_tokens"
    assert _refused(parse_completion, {**plain, "logprobs": 1, "echo": True, "stream": True}
                    ).param == "echo"
    tensors = {t.name(): t for t in model_inputs("p", echoed.sampling, False)}
    assert {n: tensors[n].datatype() for n in ("logprobs", "prompt_logprobs", "max_tokens")} \
        == {"logprobs": "INT32", "prompt_logprobs": "INT32", "max_tokens": "INT32"}


def _entry(token: str, logprob: float, *top: tuple[str, float]) -> TokenLogprobs:
    return TokenLogprobs(Candidate(len(token), token, logprob),
                         tuple(Candidate(len(t), t, v) for t, v in top))


def test_completion_logprobs_have_openais_parallel_lists_and_offsets_into_the_text():
    entries = [None, _entry(" b", -0.5, (" c", -0.2)), _entry("d", -1.0, ("d", -1.0))]
    shaped = responses.completion_logprobs(entries, first_token="a")
    assert shaped == {"tokens": ["a", " b", "d"], "token_logprobs": [None, -0.5, -1.0],
                      "top_logprobs": [None, {" c": -0.2, " b": -0.5}, {"d": -1.0}],
                      "text_offset": [0, 1, 3]}


def test_streamed_chunks_carry_their_tokens_logprobs_in_each_apis_shape():
    chat = responses.ChunkWriter(True, "c", 1, "m", False, with_logprobs=True)
    chunk = json.loads(chat.text(" b", [_entry(" b", -0.5, (" b", -0.5))]).decode()[6:])
    assert chunk["choices"][0]["logprobs"] == {"content": [{
        "token": " b", "logprob": -0.5, "bytes": [32, 98],
        "top_logprobs": [{"token": " b", "logprob": -0.5, "bytes": [32, 98]}]}]}
    completion = responses.ChunkWriter(False, "c", 1, "m", False, with_logprobs=True, offset=4)
    first = json.loads(completion.text(" b", [_entry(" b", -0.5)]).decode()[6:])
    second = json.loads(completion.text("d", [_entry("d", -1.0)]).decode()[6:])
    assert [first["choices"][0]["logprobs"]["text_offset"],
            second["choices"][0]["logprobs"]["text_offset"]] == [[4], [6]]


def test_n_choices_are_asked_for_and_each_streams_under_its_index():
    assert parse_chat({**CHAT, "n": 3}).sampling.n == 3
    assert parse_chat({**CHAT, "n": 1}).sampling.n is None  # the model's default
    for n in (0, 9, True):
        assert _refused(parse_chat, {**CHAT, "n": n}).param == "n"
    writer = responses.ChunkWriter(True, "c", 1, "m", include_usage=True, choices=2)
    roles = [json.loads(line[6:]) for line in writer.first().decode().split("\n\n") if line]
    assert [c["choices"][0]["index"] for c in roles] == [0, 1]
    piece = json.loads(writer.text("x", index=1).decode()[6:])["choices"][0]
    assert (piece["index"], piece["delta"]["content"]) == (1, "x")
    ends = [Final("stop", 3, 2, index=1), Final("length", 3, 4, index=0)]
    assert json.loads(writer.finish(ends[0]).decode()[6:])["choices"][0]["index"] == 1
    usage = json.loads(writer.end(ends).decode()[6:])["usage"]
    assert usage == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}
