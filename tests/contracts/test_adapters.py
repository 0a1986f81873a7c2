"""The adapter commands' contract (contracts/adapters.py) and its copies: `llm_adapters`'s
config.pbtxt and the admin tier in gateway/tiers.yaml."""

from __future__ import annotations

from contracts.adapters import ADMIN_TIER, INPUTS, MODEL, OUTPUTS
from gateway.render import load_tiers
from tests.contracts.test_tensors import _pbtxt_tensors


def test_the_llm_adapters_config_declares_the_contracts_tensors_in_order():
    assert list(_pbtxt_tensors(MODEL, "input").items()) == list(INPUTS.items())
    assert list(_pbtxt_tensors(MODEL, "output").items()) == list(OUTPUTS.items())


def test_the_admin_tier_exists():
    assert ADMIN_TIER in load_tiers()["tiers"]
