"""gateway/openapi.yaml: a valid OpenAPI 3 document whose limits are the model's own."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from contracts.errors import LOCAL_REPLIES, ErrorType
from contracts.logprobs import MAX_TOP_LOGPROBS
from textgen.core.config import Limits
from textgen.core.validation import (MAX_SEED, MAX_STOP_LENGTH, MAX_STOP_STRINGS, ValidationError,
                                     parse_request)

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = yaml.safe_load((ROOT / "gateway" / "openapi.yaml").read_text())
SCHEMAS = DOCUMENT["components"]["schemas"]


def _model_parameters() -> dict[str, str]:
    text = (ROOT / "model_repository" / "llm" / "config.pbtxt").read_text()
    return dict(re.findall(r'key: "(\w+)", value: \{ string_value: "([^"]*)" \}', text))


def _configured(name: str) -> int | None:
    value = PARAMETERS[name]
    return None if value == "auto" else int(value)


PARAMETERS = _model_parameters()
DEMO_CONFIG = json.loads((ROOT / "demo_model" / "config.json").read_text())
LIMITS = Limits(
    max_prompt_tokens=_configured("max_prompt_tokens"),
    max_new_tokens=_configured("max_new_tokens"),
    default_max_tokens=int(PARAMETERS["default_max_tokens"]),
).for_model(DEMO_CONFIG["max_position_embeddings"], DEMO_CONFIG["vocab_size"])


def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                 "components": DOCUMENT["components"]})


def test_the_document_is_valid_openapi_3():
    validate(DOCUMENT)
    assert DOCUMENT["openapi"].startswith("3.")


@pytest.mark.parametrize("method,path", [
    ("post", "/generate"), ("post", "/generate_stream"), ("post", "/v2/models/llm/generate"),
    ("post", "/v2/models/llm/generate_stream"), ("post", "/v2/models/llm/infer"),
    ("get", "/v2/models/llm"), ("get", "/v2/models/llm/config"),
    ("get", "/v2/models/llm/ready"), ("get", "/healthz"), ("get", "/readyz"),
    ("get", "/v1/models"), ("get", "/v1/models/{model}"), ("post", "/v1/completions"),
    ("post", "/v1/chat/completions"), ("post", "/tokenize"), ("post", "/detokenize"),
])
def test_every_public_route_is_documented(method, path):
    assert method in DOCUMENT["paths"][path]


def test_keys_are_documented_as_header_and_bearer_and_health_needs_none():
    schemes = DOCUMENT["components"]["securitySchemes"]
    assert schemes["ApiKeyHeader"] == {**schemes["ApiKeyHeader"], "type": "apiKey",
                                       "in": "header", "name": "X-API-Key"}
    assert (schemes["BearerToken"]["type"], schemes["BearerToken"]["scheme"]) == ("http",
                                                                                 "bearer")
    assert DOCUMENT["paths"]["/healthz"]["get"]["security"] == []
    assert DOCUMENT["paths"]["/readyz"]["get"]["security"] == []


def test_every_error_type_and_status_the_gateway_makes_is_documented():
    assert SCHEMAS["ErrorType"]["enum"] == [kind.value for kind in ErrorType]
    documented = {code for item in DOCUMENT["paths"].values() for operation in item.values()
                  for code in operation["responses"]}
    # 404 is the NotFound response of paths outside the document; 426 (HTTP/1.0) and 501
    # (sent as 400) come from Envoy's codec before any route, described in the introduction.
    before_routing = {404, 426, 501}
    assert {str(code) for code in LOCAL_REPLIES if code not in before_routing} <= documented
    assert "426" in DOCUMENT["info"]["description"]
    assert "NotFound" in DOCUMENT["components"]["responses"]  # paths outside the document
    for path in ("/generate", "/v2/models/llm/infer"):
        responses = DOCUMENT["paths"][path]["post"]["responses"]
        assert {"400", "401", "403", "408", "413", "429", "431", "503"} <= set(responses)


def test_the_limits_are_the_models():
    fields = SCHEMAS["GenerateFields"]["properties"]
    prompt = SCHEMAS["Prompt"]
    assert prompt["maxLength"] == LIMITS.max_prompt_chars
    assert str(LIMITS.max_prompt_tokens) in prompt["description"].replace(",", "")
    assert (fields["max_tokens"]["minimum"], fields["max_tokens"]["maximum"]) == (
        0, LIMITS.max_new_tokens)  # 0 only with prompt_logprobs (the schema's `if`)
    assert (fields["logprobs"]["maximum"], fields["prompt_logprobs"]["maximum"]) == (
        MAX_TOP_LOGPROBS, MAX_TOP_LOGPROBS)
    assert fields["max_tokens"]["default"] == LIMITS.default_max_tokens
    assert fields["top_k"]["maximum"] == LIMITS.vocab_size
    assert fields["seed"]["maximum"] == MAX_SEED
    stop = fields["stop"]["oneOf"][1]
    assert stop["maxItems"] == MAX_STOP_STRINGS
    assert SCHEMAS["StopString"]["maxLength"] == MAX_STOP_LENGTH


def _tensors(body: dict[str, Any]) -> dict[str, np.ndarray]:
    """The tensors Triton's generate endpoint makes of a JSON body."""
    dtypes = {"max_tokens": np.int32, "temperature": np.float32, "top_p": np.float32,
              "top_k": np.int32, "seed": np.uint64, "exclude_input_in_output": np.bool_,
              "ignore_eos": np.bool_, "logprobs": np.int32, "prompt_logprobs": np.int32}
    tensors = {}
    for name, value in body.items():
        if name in ("text_input", "stop"):
            row = value if isinstance(value, list) else [value]
            tensors[name] = np.array([[v.encode() for v in row]], dtype=object)
        elif name == "input_ids":
            tensors[name] = np.array([value], dtype=np.int32)
        elif name in dtypes:
            tensors[name] = np.array([[value]], dtype=dtypes[name])
    return tensors


@pytest.mark.parametrize("body", [
    {"text_input": "hi"},
    {"text_input": "hi", "max_tokens": 1},
    {"text_input": "hi", "max_tokens": 512},
    {"text_input": "hi", "max_tokens": 0},
    {"text_input": "hi", "max_tokens": 513},
    {"text_input": "hi", "temperature": 2},
    {"text_input": "hi", "temperature": 2.5},
    {"text_input": "hi", "temperature": -0.1},
    {"text_input": "hi", "top_p": 1},
    {"text_input": "hi", "top_p": 0},
    {"text_input": "hi", "top_k": 0},
    {"text_input": "hi", "top_k": 4096},
    {"text_input": "hi", "top_k": 4097},
    {"text_input": "hi", "seed": 0},
    {"text_input": "hi", "seed": 2**63 - 1},
    {"text_input": "hi", "stop": ["a"] * 8},
    {"text_input": "hi", "stop": ["a"] * 9},
    {"text_input": "hi", "stop": ["s" * 128]},
    {"text_input": "hi", "stop": ["s" * 129]},
    {"text_input": "hi", "stop": [""]},
    {"text_input": "hi", "stop": "\n"},
    {"text_input": ""},
    {"text_input": "  \n"},
    {"text_input": "a\u0000b"},
    {"text_input": "x" * 8176},
    {"text_input": "x" * 8177},
    {"text_input": "hi", "ignore_eos": True, "exclude_input_in_output": False},
    {"text_input": "hi", "logprobs": 0},
    {"text_input": "hi", "logprobs": 20},
    {"text_input": "hi", "logprobs": 21},
    {"text_input": "hi", "logprobs": -1},
    {"text_input": "hi", "prompt_logprobs": 5, "max_tokens": 0},
    {"text_input": "hi", "prompt_logprobs": 21},
    {"text_input": "hi", "input_ids": [1, 4095]},
    {"text_input": "hi", "input_ids": [4096]},
    {"text_input": "hi", "input_ids": [-1]},
    {"text_input": "hi", "input_ids": []},
])
def test_the_schema_and_the_model_agree_on_each_field(body):
    in_schema = _validator("GenerateRequest").is_valid(body)
    try:
        parse_request(_tensors(body), LIMITS)
        accepted = True
    except ValidationError:
        accepted = False
    assert in_schema == accepted, (body, in_schema, accepted)


@pytest.mark.parametrize("body,valid", [
    ({"error": "slow down (request id abc)", "code": 429, "type": "rate_limited",
      "request_id": "abc"}, True),
    ({"error": "queue full (request id a)", "code": 503, "type": "overloaded",
      "request_id": "a"}, True),
    ({"error": "x", "code": 429, "type": "slow_down", "request_id": "a"}, False),
    ({"error": {"code": 429, "type": "rate_limited", "message": "x"}, "request_id": "a"},
     False),  # an object in `error` breaks Triton's clients
    ({"error": "`temperature` must be in [0, 2], got 3.5"}, False),  # no type, no request id
    ({"error": "x", "code": 400, "type": "invalid_request", "request_id": None}, False),
])
def test_error_schema_accepts_only_the_one_contract(body, valid):
    assert _validator("Error").is_valid(body) == valid


def test_reserved_parameters_and_nested_unknown_fields_are_outside_the_schema():
    request = _validator("GenerateRequest")
    assert request.is_valid({"text_input": "hi", "anything": 1})
    assert not request.is_valid({"text_input": "hi", "parameters": {"a": 1}})
    assert not request.is_valid({"text_input": "hi", "anything": {"a": 1}})
