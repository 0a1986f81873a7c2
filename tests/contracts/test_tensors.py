"""The model's I/O schema is defined once (contracts/tensors.py); the copies Triton and the
API document need in their own formats must say the same."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from contracts.tensors import INPUTS, OUTPUTS, STREAM_INPUTS, Tensor

ROOT = Path(__file__).resolve().parents[2]
OPENAPI = yaml.safe_load((ROOT / "gateway" / "openapi.yaml").read_text())["components"][
    "schemas"]


def _pbtxt_tensors(model: str, section: str) -> dict[str, Tensor]:
    """The `input [...]` or `output [...]` entries of a model's config.pbtxt."""
    text = (ROOT / "model_repository" / model / "config.pbtxt").read_text()
    body = re.search(rf"^{section} \[\n(.*?)^\]", text, re.M | re.S).group(1)
    tensors = {}
    for entry in re.findall(r"^\s*\{(.*?)\}\s*,?\s*$", body, re.M):
        fields = dict(re.findall(r"(\w+): (\[[^\]]*\]|[^,]+)", entry))
        name = fields["name"].strip('"')
        tensors[name] = Tensor(
            name, fields["data_type"].strip(),
            tuple(int(d) for d in fields["dims"].strip("[] ").split(",")),
            optional=fields.get("optional", "false").strip() == "true",
            ragged=fields.get("allow_ragged_batch", "false").strip() == "true")
    return tensors


@pytest.mark.parametrize("model, inputs", [("llm", INPUTS), ("llm_stream", STREAM_INPUTS)])
def test_each_models_config_declares_the_contracts_tensors_in_order(model, inputs):
    assert list(_pbtxt_tensors(model, "input").items()) == list(inputs.items())
    assert list(_pbtxt_tensors(model, "output").items()) == list(OUTPUTS.items())


def test_the_api_document_names_every_input_with_its_datatype():
    documented = {}
    for choice in OPENAPI["InferInput"]["oneOf"]:
        names = choice["properties"]["name"]
        for name in names.get("enum", [names.get("const")]):
            documented[name] = choice["properties"]["datatype"]["const"]
    assert documented == {name: tensor.datatype for name, tensor in INPUTS.items()}
    inputs = OPENAPI["InferenceRequest"]["properties"]["inputs"]
    assert inputs["maxItems"] == len(INPUTS)


def test_the_api_document_names_every_output():
    outputs = OPENAPI["InferenceRequest"]["properties"]["outputs"]["items"]
    assert outputs["properties"]["name"]["enum"] == list(OUTPUTS)


def test_the_generate_routes_take_every_input_as_a_json_field_and_only_the_prompt_is_required():
    fields = OPENAPI["GenerateFields"]
    assert set(INPUTS) <= set(fields["properties"])
    assert fields["required"] == [name for name, t in INPUTS.items() if not t.optional]
