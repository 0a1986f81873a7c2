"""The OpenAI-compatible API through the real gateway, frontend and Triton, driven by the
official `openai` SDK (sync and async), as the LLM ecosystem's clients call it."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import openai
import pytest
import requests
from jsonschema import Draft202012Validator

from tests.harness import (OPENAPI, assert_disconnect_cancels, metric, model_log_records, sample,
                           scrape, wait_for_metric)
from tools import runtime

MODEL = "demo_model"
QUESTION = [{"role": "user", "content": "What is a list?"}]


@pytest.fixture(scope="module")
def client(gateway, api_key) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key, max_retries=0)


@pytest.fixture(scope="module")
def async_client(gateway, api_key) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=api_key, max_retries=0)


def model_counts(gateway, api_key: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """What the model itself reports for a prompt, through the generate route."""
    reply = requests.post(gateway.url + "/generate", headers={"X-API-Key": api_key},
                          json={"text_input": prompt, "max_tokens": max_tokens,
                                "exclude_input_in_output": True}, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()


# ---- models --------------------------------------------------------------------------------

def test_models_list_and_object_name_the_served_model_and_its_context(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    model = client.models.retrieve(MODEL)
    assert (model.id, model.object, model.model_extra["max_model_len"]) == (MODEL, "model", 512)


# ---- completions -----------------------------------------------------------------------------

def test_completion_text_and_usage_are_the_models_own(client, gateway, api_key):
    reply = client.completions.create(model=MODEL, prompt="The list", max_tokens=12,
                                      temperature=0)
    expected = model_counts(gateway, api_key, "The list", 12)
    choice = reply.choices[0]
    assert choice.text == expected["text_output"]
    assert choice.finish_reason == expected["finish_reason"] == "length"
    assert reply.usage.prompt_tokens == expected["num_input_tokens"]
    assert reply.usage.completion_tokens == expected["num_output_tokens"] == 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12
    assert reply.object == "text_completion" and reply.id.startswith("cmpl-")


def test_streamed_completion_concatenates_to_the_whole_answer(client):
    whole = client.completions.create(model=MODEL, prompt="The list", max_tokens=120,
                                      temperature=0, extra_body={"ignore_eos": True})
    chunks = list(client.completions.create(model=MODEL, prompt="The list", max_tokens=120,
                                            temperature=0, stream=True,
                                            extra_body={"ignore_eos": True}))
    # The first token alone, at least one more piece, then the end; how many pieces come
    # between depends on the engine's speed against the 25 ms stream interval (120 tokens
    # now take ~40 ms).
    assert len(chunks) >= 3 and all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)  # no usage unless asked for


def test_echo_puts_the_prompt_first(client):
    plain = client.completions.create(model=MODEL, prompt="The list", max_tokens=6,
                                      temperature=0)
    echoed = client.completions.create(model=MODEL, prompt="The list", max_tokens=6,
                                       temperature=0, echo=True)
    assert echoed.choices[0].text == "The list" + plain.choices[0].text


def test_stop_string_ends_the_text_before_it_with_finish_reason_stop(client):
    full = client.completions.create(model=MODEL, prompt="The list", max_tokens=20,
                                     temperature=0).choices[0].text
    word = full.split()[3]
    stopped = client.completions.create(model=MODEL, prompt="The list", max_tokens=20,
                                        temperature=0, stop=[word]).choices[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == full[:full.index(word)]


def test_max_completion_tokens_wins_over_max_tokens_and_the_default_is_the_models(client):
    chat = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0,
                                          max_tokens=30, max_completion_tokens=5,
                                          extra_body={"ignore_eos": True})
    assert chat.usage.completion_tokens == 5
    default = client.completions.create(model=MODEL, prompt="The", temperature=0,
                                        extra_body={"ignore_eos": True})
    assert default.usage.completion_tokens == 64  # default_max_tokens, never a silent 16


def test_seed_makes_sampling_reproducible(client):
    def sample(seed: int) -> str:
        return client.completions.create(model=MODEL, prompt="The list", max_tokens=16,
                                         temperature=1.0, top_p=0.95, seed=seed,
                                         extra_body={"top_k": 50}).choices[0].text
    assert sample(7) == sample(7)
    assert len({sample(7), sample(8), sample(9)}) > 1


def test_unknown_fields_are_ignored_as_vllm_does(gateway, api_key):
    reply = requests.post(gateway.url + "/v1/completions", headers={"X-API-Key": api_key},
                          json={"model": MODEL, "prompt": "The", "max_tokens": 2,
                                "some_future_field": {"x": 1}, "user": "alice"}, timeout=60)
    assert reply.status_code == 200, reply.text


# ---- chat ------------------------------------------------------------------------------------

def test_chat_uses_the_models_template_and_reports_usage(client, gateway, api_key):
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12,
                                           temperature=0)
    rendered = "User: What is a list?\nAssistant: "  # demo_model/chat_template.jinja
    expected = model_counts(gateway, api_key, rendered, 12)
    message = reply.choices[0].message
    assert (message.role, message.content) == ("assistant", expected["text_output"])
    assert reply.usage.prompt_tokens == expected["num_input_tokens"]
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")


def test_text_parts_are_read_as_their_joined_text(client):
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is "},
                                          {"type": "text", "text": "a list?"}]}]
    as_parts = client.chat.completions.create(model=MODEL, messages=parts, max_tokens=8,
                                              temperature=0)
    as_text = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8,
                                             temperature=0)
    assert as_parts.choices[0].message.content == as_text.choices[0].message.content


def test_streamed_chat_has_role_first_then_content_then_one_usage_chunk(client):
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=10, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    usage = [c for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0] is chunks[-1] and usage[0].choices == []
    assert usage[0].usage.completion_tokens == 10
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == "length" and not any(finals[:-1])
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=10,
                                           temperature=0, extra_body={"ignore_eos": True})
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content


def test_async_client_streams_and_answers(async_client):
    async def run() -> tuple[str, str]:
        whole = await async_client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=8, temperature=0)
        stream = await async_client.completions.create(model=MODEL, prompt="The list",
                                                       max_tokens=8, temperature=0,
                                                       stream=True)
        pieces = [chunk.choices[0].text async for chunk in stream]
        return whole.choices[0].message.content, "".join(pieces)

    chat_text, completion_text = asyncio.run(run())
    assert chat_text and completion_text


# ---- errors, as the SDK raises them -----------------------------------------------------------

@pytest.mark.parametrize("params,param", [
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 100000}, "max_tokens"),
    ({"temperature": 5}, "temperature"),
    ({"n": 9}, "n"),
    ({"top_logprobs": 3}, "top_logprobs"),  # needs logprobs: true
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
])
def test_invalid_or_unsupported_parameters_raise_bad_request_naming_them(client, params, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=QUESTION, **params)
    error = info.value
    assert error.status_code == 400 and error.body["param"] == param, error.body
    assert error.body["type"] == "invalid_request_error"
    assert error.response.headers["x-request-id"]


def test_suffix_is_refused_clearly(client):
    with pytest.raises(openai.BadRequestError, match="suffix"):
        client.completions.create(model=MODEL, prompt="The", suffix="end")


def test_no_key_raises_authentication_error(gateway):
    # The SDK insists on a key; a request hook takes its Authorization header away.
    def strip_key(request: Any) -> None:
        del request.headers["authorization"]

    bare = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0,
                         http_client=openai.DefaultHttpxClient(
                             event_hooks={"request": [strip_key]}))
    with pytest.raises(openai.AuthenticationError) as info:
        bare.models.list()
    assert info.value.body["code"] == "unauthenticated"
    assert info.value.response.headers["x-request-id"]


def test_unknown_key_raises_permission_denied(gateway):
    stranger = openai.OpenAI(base_url=gateway.url + "/v1", api_key="llmk_" + "2" * 40,
                             max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        stranger.models.list()


def test_unknown_model_and_route_raise_not_found(client, gateway, api_key):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    reply = requests.get(gateway.url + "/v1/embeddings", headers={"X-API-Key": api_key},
                         timeout=30)
    assert reply.status_code == 404 and reply.json()["error"]["type"] == "not_found_error"


def test_rate_limited_key_raises_rate_limit_error_with_retry_after(gateway):
    key = gateway.issue("openai-limited", "test")  # burst 3
    limited = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as info:
        for _ in range(10):
            limited.models.list()
    assert info.value.response.headers["retry-after"]
    assert info.value.body["code"] == "rate_limited"


def test_bad_json_body_is_a_400_in_openai_shape(gateway, api_key):
    reply = requests.post(gateway.url + "/v1/chat/completions", data=b"{not json",
                          headers={"X-API-Key": api_key}, timeout=30)
    assert reply.status_code == 400
    assert set(reply.json()["error"]) == {"message", "type", "param", "code"}


# ---- cancellation and logs --------------------------------------------------------------------

def test_client_that_disconnects_cancels_its_generation(gateway, api_key, triton, triton_log):
    body = {"model": MODEL, "prompt": "The", "max_tokens": 256, "ignore_eos": True,
            "stream": True}
    assert_disconnect_cancels(
        triton, triton_log, gateway.url + "/v1/completions",
        lambda request_id: (body, {"X-API-Key": api_key, "x-request-id": request_id}))


def test_client_that_leaves_before_a_whole_answer_cancels_it_too(gateway, api_key, triton,
                                                                 triton_log):
    """Not streamed: the frontend notices the hang-up while it waits for the whole text."""
    before = metric(triton, "llm:request_cancellations_total")
    request_id = f"openai-unary-cancel-{time.time_ns()}"
    # The most tokens a request may ask for: ~80 ms at 0.3 ms a token.
    body = json.dumps({"model": MODEL, "prompt": "The", "max_tokens": 256,
                       "ignore_eos": True}).encode()
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\n"
                     b"Content-Type: application/json\r\n"
                     + f"X-API-Key: {api_key}\r\nx-request-id: {request_id}\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        deadline = time.monotonic() + 5
        while metric(triton, "vllm:num_requests_running") < 1:  # hang up once it runs
            assert time.monotonic() < deadline, "the generation never started"
            time.sleep(0.002)
    wait_for_metric(triton, "llm:request_cancellations_total", before + 1)
    record = next(r for r in model_log_records(triton_log) if r["request_id"] == request_id)
    assert record["finish_reason"] == "cancelled" and record["completion_tokens"] < 256


def test_openai_requests_are_logged_with_ids_but_no_key_or_text(gateway, triton, triton_log):
    key = gateway.issue("openai-logs")
    prompt = "Cerulean axolotl madrigal"
    request_id = f"openai-log-{time.time_ns()}"
    oa = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0,
                       default_headers={"x-request-id": request_id})
    answer = oa.chat.completions.create(model=MODEL, messages=[{"role": "user",
                                                                "content": prompt}],
                                        max_tokens=8, temperature=0).choices[0].message.content
    time.sleep(1.0)
    access = [json.loads(line) for line in gateway.access_log.read_text().splitlines()]
    assert any(r["request_id"] == request_id and r["path"] == "/v1/chat/completions"
               and r["key_name"] == "openai-logs" for r in access)
    assert any(r["request_id"] == request_id for r in model_log_records(triton_log))
    logs = (gateway.access_log, triton_log, triton.run_dir / "openai.log")
    for log in logs:
        text = log.read_text(errors="replace")
        assert key not in text and key[5:] not in text
        assert prompt not in text and (not answer.strip() or answer.strip() not in text)


# ---- the published contract ---------------------------------------------------------------

@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"messages": QUESTION}),
    ("/v1/completions", {"prompt": "The list"}),
])
def test_every_streamed_chunk_matches_the_openapi_document(gateway, api_key, path, body):
    """schemathesis cannot read `data: [DONE]` as JSON, so the chunks are checked here."""
    chunk_schema = Draft202012Validator({"$ref": "#/components/schemas/OpenAIStreamChunk",
                                         "components": OPENAPI["components"]})
    request = {"model": MODEL, "max_tokens": 6, "stream": True,
               "stream_options": {"include_usage": True}, **body}
    with requests.post(gateway.url + path, json=request, headers={"X-API-Key": api_key},
                       stream=True, timeout=60) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in reply.iter_lines(decode_unicode=True)
                  if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        problems = list(chunk_schema.iter_errors(json.loads(event)))
        assert not problems, (event, problems[0].message)


def test_the_sdk_sends_logit_bias_penalties_and_min_tokens_streamed_or_not(client):
    from transformers import AutoTokenizer

    the = AutoTokenizer.from_pretrained(runtime.DEMO_MODEL).encode(" the")[0]
    forced = client.completions.create(model=MODEL, prompt="The list", max_tokens=4,
                                       logit_bias={str(the): 100})
    assert forced.choices[0].text == " the the the the"
    chunks = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is a list?"}], max_tokens=4,
        logit_bias={str(the): 100}, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        " the the the the"
    plain = client.completions.create(model=MODEL, prompt="The list", max_tokens=24,
                                      temperature=0)
    penalized = client.completions.create(model=MODEL, prompt="The list", max_tokens=24,
                                          temperature=0, presence_penalty=2.0,
                                          frequency_penalty=1.0)
    assert penalized.choices[0].text != plain.choices[0].text
    stopped = client.completions.create(model=MODEL, prompt="The list", max_tokens=8,
                                        temperature=0, stop=["module"],
                                        extra_body={"min_tokens": 4,
                                                    "repetition_penalty": 1.0})
    assert "module" in stopped.choices[0].text


@pytest.mark.parametrize("field,value", [("presence_penalty", 3.0), ("logit_bias", {"x": 1}),
                                         ("frequency_penalty", -2.5)])
def test_the_sdk_gets_a_bad_request_naming_an_out_of_range_control(client, field, value):
    with pytest.raises(openai.BadRequestError, match=field) as info:
        client.completions.create(model=MODEL, prompt="The list", max_tokens=4,
                                  **{field: value})
    assert info.value.body["param"] == field


def _schema(name: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                 "components": OPENAPI["components"]})


def test_tokenize_and_detokenize_round_trip_through_the_gateway(gateway, api_key):
    """vLLM's tokenizer routes, behind the same keys: the ids the model sees for a prompt or
    a chat, and the text back from ids."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(runtime.DEMO_MODEL)
    headers = {"X-API-Key": api_key}
    reply = requests.post(gateway.url + "/tokenize", headers=headers, timeout=10, json={
        "model": MODEL, "prompt": "The list module", "return_token_strs": True})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert not list(_schema("TokenizeResponse").iter_errors(body))
    assert body["tokens"] == tokenizer.encode("The list module")
    assert (body["count"], body["max_model_len"]) == (len(body["tokens"]), 512)
    assert body["token_strs"] == tokenizer.convert_ids_to_tokens(body["tokens"])
    back = requests.post(gateway.url + "/detokenize", headers=headers, timeout=10,
                         json={"model": MODEL, "tokens": body["tokens"]})
    assert back.json() == {"prompt": "The list module"}
    chat = requests.post(gateway.url + "/tokenize", headers=headers, timeout=10, json={
        "model": MODEL, "messages": [{"role": "user", "content": "What is a list?"}]}).json()
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "What is a list?"}],
                                             tokenize=False, add_generation_prompt=True)
    assert chat["tokens"] == tokenizer.encode(rendered, add_special_tokens=False)
    assert chat["token_strs"] is None


@pytest.mark.parametrize("path,body,status,param", [
    ("/detokenize", {"model": MODEL, "tokens": [1, 999999]}, 400, "tokens"),
    ("/detokenize", {"model": MODEL, "tokens": "1 2"}, 400, "tokens"),
    ("/tokenize", {"model": MODEL}, 400, "prompt"),
    ("/tokenize", {"model": "gpt-4", "prompt": "x"}, 404, "model"),
])
def test_tokenizer_routes_refuse_bad_input_in_openais_shape(gateway, api_key, path, body,
                                                            status, param):
    reply = requests.post(gateway.url + path, json=body, headers={"X-API-Key": api_key},
                          timeout=10)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and reply.headers["x-request-id"]
    assert not list(_schema("OpenAIError").iter_errors(reply.json()))


def test_tokenizer_routes_need_a_key_and_say_so_in_openais_shape(gateway):
    reply = requests.post(gateway.url + "/tokenize", json={"model": MODEL, "prompt": "x"},
                          timeout=10)
    assert reply.status_code == 401
    assert reply.json()["error"]["type"] == "authentication_error"


# ---- logprobs -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_logprobs():
    """The log-softmax of the demo model's own logits after each of `ids` (HF module)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(runtime.DEMO_MODEL).eval()
    tokenizer = AutoTokenizer.from_pretrained(runtime.DEMO_MODEL)

    def logprobs(text: str, extra: list[int] = ()) -> tuple[list[int], Any]:
        ids = tokenizer.encode(text) + list(extra)
        with torch.inference_mode():
            return ids, torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    return logprobs


def test_the_sdk_gets_chat_logprobs_streamed_or_not_and_they_agree(client):
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8,
                                           temperature=0, logprobs=True, top_logprobs=3)
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens
    for token in content:
        assert len(token.top_logprobs) == 3 and token.top_logprobs[0].token == token.token
        assert bytes(token.bytes).decode("utf-8", "replace") == token.token
        assert [t.logprob for t in token.top_logprobs] == sorted(
            (t.logprob for t in token.top_logprobs), reverse=True)
    assert "".join(t.token for t in content).startswith(whole.choices[0].message.content)
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=8, temperature=0, logprobs=True,
        top_logprobs=3, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs
                for t in c.choices[0].logprobs.content]
    assert [(t.token, round(t.logprob, 4)) for t in streamed] == [
        (t.token, round(t.logprob, 4)) for t in content]
    plain = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)
    assert plain.choices[0].logprobs is None  # only when asked


def test_the_sdk_gets_completion_logprobs_streamed_or_not_and_they_agree(client):
    whole = client.completions.create(model=MODEL, prompt="The list", max_tokens=8,
                                      temperature=0, logprobs=2)
    lp = whole.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == whole.usage.completion_tokens
    assert all(len(top) >= 2 for top in lp.top_logprobs)
    assert lp.text_offset == [sum(map(len, lp.tokens[:i])) for i in range(len(lp.tokens))]
    chunks = list(client.completions.create(model=MODEL, prompt="The list", max_tokens=8,
                                            temperature=0, logprobs=2, stream=True))
    streamed = [(token, round(value, 4)) for c in chunks if c.choices and c.choices[0].logprobs
                for token, value in zip(c.choices[0].logprobs.tokens,
                                        c.choices[0].logprobs.token_logprobs)]
    assert streamed == [(t, round(v, 4)) for t, v in zip(lp.tokens, lp.token_logprobs)]


def test_echo_with_logprobs_scores_the_prompt_as_the_model_does(client, model_logprobs):
    """What lm-evaluation-harness sends for a loglikelihood: the prompt's token logprobs, the
    first null, equal to the model's own; max_tokens 0 generates nothing."""
    prompt = "Python is a programming language"
    ids, expected = model_logprobs(prompt)
    scored = client.completions.create(model=MODEL, prompt=prompt, max_tokens=0, echo=True,
                                       logprobs=1)
    choice = scored.choices[0]
    assert choice.text == prompt and scored.usage.completion_tokens == 0
    lp = choice.logprobs
    assert len(lp.tokens) == len(ids) == scored.usage.prompt_tokens
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    for t in range(1, len(ids)):
        assert lp.token_logprobs[t] == pytest.approx(expected[t - 1, ids[t]].item(), abs=1e-4)
    assert "".join(lp.tokens) == prompt and lp.text_offset[0] == 0
    generated = client.completions.create(model=MODEL, prompt=prompt, max_tokens=3,
                                          temperature=0, echo=True, logprobs=2)
    lp = generated.choices[0].logprobs
    assert len(lp.tokens) == len(ids) + generated.usage.completion_tokens
    assert generated.choices[0].text.startswith(prompt)
    # greedy: the first generated token is the most likely after the prompt
    assert lp.token_logprobs[len(ids)] == pytest.approx(expected[-1].max().item(), abs=1e-4)


def test_generate_api_returns_token_logprobs_as_json(gateway, api_key):
    reply = requests.post(gateway.url + "/generate", headers={"X-API-Key": api_key},
                          json={"text_input": "The list", "max_tokens": 4, "logprobs": 2,
                                "prompt_logprobs": 0, "exclude_input_in_output": True},
                          timeout=60)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    tokens = json.loads(body["token_logprobs"])
    prompt = json.loads(body["prompt_token_logprobs"])
    assert len(tokens) == body["num_output_tokens"] and len(prompt) == body["num_input_tokens"]
    assert prompt[0] is None and all(len(t["top"]) == 2 for t in tokens)
    assert "".join(t["token"] for t in tokens).startswith(body["text_output"])
    assert _schema("GenerateResponse").is_valid(body)
    plain = requests.post(gateway.url + "/generate", headers={"X-API-Key": api_key},
                          json={"text_input": "The list", "max_tokens": 2}, timeout=60).json()
    assert "token_logprobs" not in plain and "prompt_token_logprobs" not in plain


def test_a_prompt_of_token_ids_runs_as_those_ids(client, model_logprobs):
    """lm-evaluation-harness's default (`tokenized_requests`): the prompt as token ids, which
    the model runs without tokenizing again; an id outside the vocabulary is a 400."""
    ids, _ = model_logprobs("The list")
    ids = ids + [ids[0], ids[-1]]  # a sequence the text's tokenization would not give back
    _, expected = model_logprobs("", ids)
    scored = client.completions.create(model=MODEL, prompt=ids, max_tokens=1, temperature=0,
                                       echo=True, logprobs=1)
    lp = scored.choices[0].logprobs
    assert scored.usage.prompt_tokens == len(ids) and len(lp.token_logprobs) == len(ids) + 1
    assert lp.token_logprobs[1:len(ids)] == pytest.approx(
        [expected[t - 1, ids[t]].item() for t in range(1, len(ids))], abs=1e-4)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=[[1, 999999]], max_tokens=1)
    assert info.value.body["param"] == "prompt" and "999999" in info.value.body["message"]


def test_the_sdk_gets_n_choices_streamed_or_not_each_with_its_index_and_end(client):
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=6, n=3,
                                           temperature=1.0, seed=9, logprobs=True)
    assert [c.index for c in whole.choices] == [0, 1, 2]
    assert all(c.finish_reason in ("stop", "length") and c.message.content is not None
               and len(c.logprobs.content) >= 1 for c in whole.choices)
    assert whole.usage.completion_tokens == sum(len(c.logprobs.content) for c in whole.choices)
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=6, n=3, temperature=1.0, seed=9,
        stream=True, stream_options={"include_usage": True}))
    streamed = {i: "".join(c.choices[0].delta.content or "" for c in chunks
                           if c.choices and c.choices[0].index == i) for i in range(3)}
    assert streamed == {c.index: c.message.content for c in whole.choices}  # seeded
    assert sum(1 for c in chunks if c.choices and c.choices[0].finish_reason) == 3
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    echoed = client.completions.create(model=MODEL, prompt="The list", max_tokens=3, n=2,
                                       echo=True, temperature=0)
    assert [c.text.startswith("The list") for c in echoed.choices] == [True, True]
    assert echoed.choices[0].text == echoed.choices[1].text  # greedy: the same sequence
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="The list", max_tokens=3, n=9)
    assert info.value.body["param"] == "n"


# ---- the frontend's own metrics -------------------------------------------------------------

def test_frontend_metrics_count_answers_errors_first_bytes_and_streamed_tokens(
        client, openai_frontend, triton):
    route = "/v1/completions"

    def value(name: str, **labels: str) -> float:
        # Its own port, not the API's: a network policy can admit Prometheus there alone.
        return sample(scrape(f"http://127.0.0.1:{triton.openai_metrics_port}/metrics"), name,
                      **labels)

    before = {"ok": value("llm_openai_requests_total", route=route, code="200"),
              "missing": value("llm_openai_requests_total", route=route, code="404"),
              "not_found": value("llm_openai_errors_total", route=route, type="not_found"),
              "streams": value("llm_openai_time_to_first_byte_seconds_count", route=route,
                               stream="true"),
              "tokens": value("llm_openai_streamed_tokens_total", route=route)}
    stream = client.completions.create(model=MODEL, prompt="The list", max_tokens=6,
                                       temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    usage = [chunk.usage for chunk in stream if chunk.usage][0]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    assert value("llm_openai_requests_total", route=route, code="200") == before["ok"] + 1
    assert value("llm_openai_requests_total", route=route, code="404") == before["missing"] + 1
    assert value("llm_openai_errors_total", route=route,
                 type="not_found") == before["not_found"] + 1
    assert value("llm_openai_time_to_first_byte_seconds_count", route=route,
                 stream="true") == before["streams"] + 1
    assert value("llm_openai_streamed_tokens_total",
                 route=route) == before["tokens"] + usage.completion_tokens


def test_frontend_metrics_are_not_served_on_the_api_nor_through_the_gateway(
        gateway, api_key, openai_frontend):
    reply = requests.get(gateway.url + "/metrics", headers={"X-API-Key": api_key}, timeout=10)
    assert reply.status_code == 404
    assert requests.get(openai_frontend + "/metrics", timeout=10).status_code == 404
