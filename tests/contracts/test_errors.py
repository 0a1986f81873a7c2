"""The error contract is defined once (contracts/errors.py) and the model speaks it."""

from __future__ import annotations

import re

import pytest

from contracts.errors import (GRPC_STATUS, LOCAL_REPLIES, STATUS, TYPE_OF_STATUS, ErrorType,
                              error_text, wire_message)
from gateway.render import GatewaySettings, load_tiers, render_envoy_config, render_error_contract


def test_every_type_has_a_status_and_every_status_a_type():
    assert set(STATUS) == set(ErrorType)
    for status, kind in TYPE_OF_STATUS.items():
        assert STATUS[kind] == status
    for _, (status, _) in LOCAL_REPLIES.items():
        assert status in TYPE_OF_STATUS


@pytest.mark.parametrize("kind,status", [
    (ErrorType.INVALID_REQUEST, 400), (ErrorType.OVERLOADED, 503),
    (ErrorType.UNAVAILABLE, 503), (ErrorType.INTERNAL, 500)])
def test_each_error_kind_the_model_sets_is_a_contract_type_with_its_status(kind, status):
    assert STATUS[ErrorType(kind.value)] == status
    assert ErrorType(kind.value) in GRPC_STATUS


def test_model_error_messages_lead_with_their_type_for_the_gateway_to_read():
    text = wire_message(ErrorType.OVERLOADED, "the server is at capacity (128 requests waiting)")
    assert text == "overloaded: the server is at capacity (128 requests waiting)"
    kind, rest = re.match(r"^([a-z_]+): (.*)$", text).groups()  # error_contract.lua's pattern
    assert (kind, rest) == ("overloaded", "the server is at capacity (128 requests waiting)")


def test_error_text_ends_with_the_request_id():
    assert error_text("no such route", "abc-1") == "no such route (request id abc-1)"


def test_the_lua_filter_gets_its_tables_from_the_python_definition():
    code = render_error_contract()
    assert code.startswith("-- GENERATED")
    assert '["overloaded"] = 503' in code and '[429] = "rate_limited"' in code
    assert '["invalid_request"] = 3' in code  # gRPC INVALID_ARGUMENT
    assert 'ERROR_TEXT = "%s (request id %s)"' in code
    assert "function envoy_on_response" in code


def test_every_local_reply_status_gets_a_body_in_the_contract_shape():
    config = render_envoy_config(GatewaySettings.from_env({}), load_tiers())
    for envoy_status, (status, _) in LOCAL_REPLIES.items():
        kind = TYPE_OF_STATUS[status].value
        assert f'"runtime_key": "llm.e{envoy_status}"' in config
        assert f'"code": {status}, "type": "{kind}"' in config
