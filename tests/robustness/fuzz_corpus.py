"""The hand-written corpus of malformed request bodies, each with the answer it must get.

Each case is (name, body bytes, expected status). `{P}` in a body is replaced by a prompt
holding the session's canary (see conftest.py), so the log scan can look for it.
"""

from __future__ import annotations

import json
from typing import NamedTuple


class Case(NamedTuple):
    name: str
    body: bytes
    status: int


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


MIB = 1024 * 1024

# Bodies for the four generate routes (`/generate`, `/generate_stream` and their
# `/v2/models/llm/...` forms). Valid fields use max_tokens 1 to stay cheap.
GENERATE: list[Case] = [
    # Not JSON, or not a JSON object.
    Case("empty-body", b"", 400),
    Case("not-json", b"{text_input: {P}", 400),
    Case("truncated-json", b'{"text_input": "{P}", "max_tok', 400),
    Case("trailing-garbage", b'{"text_input": "{P}", "max_tokens": 1} trailing', 400),
    Case("json-array", b'["{P}"]', 400),
    Case("json-string", b'"{P}"', 400),
    Case("json-number", b"42", 400),
    Case("json-null", b"null", 400),
    Case("deep-nesting", b'{"a":' * 10000 + b"1" + b"}" * 10000, 400),
    # 400 KB that overflowed the stack of Triton's JSON reader and killed the server.
    Case("deep-array-nesting", b'{"text_input": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", 400),
    Case("lone-surrogate", b'{"text_input": "{P} \\ud800", "max_tokens": 1}', 400),
    Case("invalid-utf8-bytes", b'{"text_input": "{P} \xff\xfe\xc3\x28", "max_tokens": 1}', 400),
    Case("utf16-bom-body", '{"text_input": "{P}"}'.encode("utf-16"), 400),
    # Missing and unknown fields.
    Case("empty-object", b"{}", 400),
    Case("text-input-missing", b'{"max_tokens": 1}', 400),
    Case("text-input-misspelt", b'{"Text_Input": "{P}", "max_tokens": 1}', 400),
    Case("unknown-object-field", b'{"text_input": "{P}", "max_tokens": 1, "x": {"y": 1}}', 400),
    Case("unknown-array-field", b'{"text_input": "{P}", "max_tokens": 1, "x": [1, 2]}', 400),
    Case("unknown-null-field", b'{"text_input": "{P}", "max_tokens": 1, "x": null}', 400),
    Case("nul-in-field-name", b'{"text_input": "{P}", "max_tokens": 1, "a\\u0000b": 1}', 400),
    Case("reserved-parameters", b'{"text_input": "{P}", "parameters": {"x-llm-tier": "premium"}}',
         400),
    Case("duplicate-field", b'{"text_input": "{P}", "text_input": "{P}", "max_tokens": 1}', 400),
    # Wrong types.
    Case("text-input-number", b'{"text_input": 5}', 400),
    Case("text-input-null", b'{"text_input": null}', 400),
    Case("text-input-object", b'{"text_input": {"text": "{P}"}}', 400),
    Case("text-input-two-prompts", b'{"text_input": ["{P}", "{P}"]}', 400),
    Case("text-input-list-of-numbers", b'{"text_input": [1]}', 400),
    Case("max-tokens-string", b'{"text_input": "{P}", "max_tokens": "5"}', 400),
    Case("max-tokens-float", b'{"text_input": "{P}", "max_tokens": 2.5}', 400),
    Case("max-tokens-bool", b'{"text_input": "{P}", "max_tokens": true}', 400),
    Case("max-tokens-list", b'{"text_input": "{P}", "max_tokens": [1, 2]}', 400),
    Case("temperature-string", b'{"text_input": "{P}", "temperature": "hot"}', 400),
    Case("seed-float", b'{"text_input": "{P}", "seed": 1.5}', 400),
    Case("stop-numbers", b'{"text_input": "{P}", "stop": [1, 2]}', 400),
    Case("flag-number", b'{"text_input": "{P}", "exclude_input_in_output": 1}', 400),
    Case("flag-string", b'{"text_input": "{P}", "ignore_eos": "yes"}', 400),
    Case("id-number", b'{"text_input": "{P}", "max_tokens": 1, "id": 7}', 400),
    # Out of range: huge, negative, NaN, Infinity.
    Case("max-tokens-zero", b'{"text_input": "{P}", "max_tokens": 0}', 400),
    Case("max-tokens-negative", b'{"text_input": "{P}", "max_tokens": -1}', 400),
    Case("max-tokens-over-limit", b'{"text_input": "{P}", "max_tokens": 513}', 400),
    Case("max-tokens-int32-overflow", b'{"text_input": "{P}", "max_tokens": 2147483648}', 400),
    Case("max-tokens-int64-overflow", b'{"text_input": "{P}", "max_tokens": 99999999999999999999}',
         400),
    Case("max-tokens-1e400", b'{"text_input": "{P}", "max_tokens": 1e400}', 400),
    Case("temperature-nan", b'{"text_input": "{P}", "temperature": NaN}', 400),
    Case("temperature-infinity", b'{"text_input": "{P}", "temperature": Infinity}', 400),
    Case("temperature-minus-infinity", b'{"text_input": "{P}", "temperature": -Infinity}', 400),
    Case("temperature-1e308", b'{"text_input": "{P}", "temperature": 1e308}', 400),
    Case("temperature-negative", b'{"text_input": "{P}", "temperature": -0.5}', 400),
    Case("top-p-zero", b'{"text_input": "{P}", "top_p": 0}', 400),
    Case("top-p-denormal", b'{"text_input": "{P}", "top_p": 1e-320}', 400),
    Case("top-p-over-one", b'{"text_input": "{P}", "top_p": 1.5}', 400),
    Case("top-k-negative", b'{"text_input": "{P}", "top_k": -1}', 400),
    Case("top-k-over-vocabulary", b'{"text_input": "{P}", "top_k": 1000000}', 400),
    Case("seed-negative", b'{"text_input": "{P}", "seed": -1}', 400),
    Case("seed-over-int64", b'{"text_input": "{P}", "seed": 9223372036854775808}', 400),
    Case("seed-uint64-max", b'{"text_input": "{P}", "seed": 18446744073709551615}', 400),
    # Strings: empty, blank, NUL, enormous.
    Case("prompt-empty", b'{"text_input": ""}', 400),
    Case("prompt-blank", b'{"text_input": " \\t\\n "}', 400),
    Case("prompt-nul", b'{"text_input": "{P}\\u0000after"}', 400),
    Case("prompt-over-8176-chars", _json({"text_input": "{P} " + "x" * 9000}), 400),
    Case("prompt-over-511-tokens", _json({"text_input": "{P} " + "the list " * 700}), 400),
    Case("prompt-plus-max-tokens-over-context",
         _json({"text_input": "{P} " + "the list " * 200, "max_tokens": 256}), 400),
    Case("prompt-half-mib", _json({"text_input": "{P} " + "x" * (MIB // 2)}), 400),
    Case("body-over-1-mib", _json({"text_input": "{P} " + "x" * (MIB + 16)}), 413),
    Case("stop-empty-string", b'{"text_input": "{P}", "stop": [""]}', 400),
    Case("stop-nine-strings", _json({"text_input": "{P}", "stop": list("abcdefghi")}), 400),
    Case("stop-string-too-long", _json({"text_input": "{P}", "stop": ["s" * 129]}), 400),
    Case("stop-nul", b'{"text_input": "{P}", "stop": ["a\\u0000"]}', 400),
]

# KServe v2 infer bodies for /v2/models/llm/infer.
_PROMPT = {"name": "text_input", "datatype": "BYTES", "shape": [1, 1], "data": ["{P}"]}


def _infer(*inputs: dict, **extra: object) -> bytes:
    return _json({"inputs": list(inputs), **extra})


def _with(**changes: object) -> dict:
    return {**_PROMPT, **changes}


def _tensor(name: str, datatype: str, data: list) -> dict:
    return {"name": name, "datatype": datatype, "shape": [1, len(data)], "data": data}


INFER: list[Case] = [
    Case("not-json", b"{inputs: [", 400),
    Case("deep-array-nesting", b"[" * 200_000 + b"]" * 200_000, 400),
    Case("deep-data-nesting", _infer(_with(data=["{P}"])).replace(
        b'["{P}"]', b"[" * 1000 + b'"{P}"' + b"]" * 1000), 400),
    Case("json-array", b"[]", 400),
    Case("no-inputs-field", b"{}", 400),
    Case("inputs-not-a-list", _json({"inputs": 5}), 400),
    Case("inputs-empty", _infer(), 400),
    Case("input-not-an-object", _json({"inputs": [5]}), 400),
    Case("input-without-name", _infer({k: v for k, v in _PROMPT.items() if k != "name"}), 400),
    Case("input-name-number", _infer(_with(name=5)), 400),
    Case("input-unknown", _infer(_PROMPT, _tensor("zzz", "INT32", [1])), 400),
    Case("input-duplicate", _infer(_PROMPT, _PROMPT), 400),
    Case("missing-text-input", _infer(_tensor("max_tokens", "INT32", [1])), 400),
    Case("datatype-wrong", _infer(_with(datatype="INT32", data=[1])), 400),
    Case("datatype-unknown", _infer(_with(datatype="STRING")), 400),
    Case("datatype-number", _infer(_with(datatype=5)), 400),
    Case("shape-mismatch", _infer(_with(shape=[2, 1])), 400),
    # 150 bytes claiming 2^40 INT32 elements: Triton allocated for them and aborted.
    Case("shape-claims-2^40-elements", _infer(_PROMPT, {**_tensor("max_tokens", "INT32", [1]),
                                                        "shape": [1, 2**40]}), 400),
    Case("shape-claims-2^32-elements", _infer(_PROMPT, {**_tensor("temperature", "FP32", [1.0]),
                                                        "shape": [2**16, 2**16]}), 400),
    Case("shape-claims-1e300-elements", _infer(_PROMPT).replace(b"[1, 1]", b"[1, 1e300]"), 400),
    Case("bytes-batch-of-2^40", _infer(_with(shape=[2**40, 1])), 400),
    Case("shape-negative", _infer(_with(shape=[-1, 1])), 400),
    Case("shape-string", _infer(_with(shape="1,1")), 400),
    Case("shape-rank-3", _infer(_with(shape=[1, 1, 1])), 400),
    Case("shape-no-batch", _infer(_with(shape=[1])), 400),
    Case("shape-zero-rows", _infer(_with(shape=[0, 1], data=[])), 400),
    Case("batch-over-32", _infer(_with(shape=[33, 1], data=["{P}"] * 33)), 400),
    Case("data-missing", _infer({k: v for k, v in _PROMPT.items() if k != "data"}), 400),
    Case("data-number-for-bytes", _infer(_with(data=[5])), 400),
    Case("data-not-a-list", _infer(_with(data="{P}")), 400),
    Case("data-shorter-than-shape", _infer(_PROMPT, {**_tensor("max_tokens", "INT32", []),
                                                    "shape": [1, 1]}), 400),
    Case("max-tokens-string", _infer(_PROMPT, _tensor("max_tokens", "INT32", ["5"])), 400),
    Case("max-tokens-fp32", _infer(_PROMPT, _tensor("max_tokens", "FP32", [5.0])), 400),
    Case("max-tokens-negative", _infer(_PROMPT, _tensor("max_tokens", "INT32", [-3])), 400),
    Case("temperature-nan", _infer(_PROMPT, _tensor("temperature", "FP32", ["NaN"])), 400),
    Case("seed-negative", _infer(_PROMPT, _tensor("seed", "UINT64", [-1])), 400),
    Case("prompt-nul", _infer(_with(data=["{P}\u0000"])), 400),
    Case("output-unknown", _infer(_PROMPT, outputs=[{"name": "nope"}]), 400),
    Case("outputs-not-a-list", _infer(_PROMPT, outputs=5), 400),
    Case("parameters-not-an-object", _infer(_PROMPT, parameters=5), 400),
    Case("parameter-name-with-nul", _infer(_PROMPT, parameters={"a\u0000b": 1}), 400),
    Case("id-number", _infer(_PROMPT, id=5), 400),
    Case("body-over-1-mib", _infer(_with(data=["{P}" + "x" * (MIB + 16)])), 413),
]


def fill(body: bytes, prompt: str) -> bytes:
    return body.replace(b"{P}", prompt.encode())
