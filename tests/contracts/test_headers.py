"""The headers the gateway sets are listed once (contracts/headers.py); the Lua filters and the
Envoy template that cannot import it must name the same headers."""

from __future__ import annotations

import re
from pathlib import Path

from contracts.headers import FORWARDED, IDENTITY, KEY_NAME_METADATA, Header
from gateway.render import render_auth_filter

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"


def test_the_generate_routes_carry_exactly_the_forwarded_headers_as_parameters():
    lua = (GATEWAY / "generate_parameters.lua").read_text()
    template = re.search(r"'\"parameters\":\{(.*?)\}'", lua).group(1)
    assert re.findall(r'\\?"([\w-]+)\\?":\\?"%s\\?"', template) == [h.value for h in FORWARDED]


def test_the_key_filter_drops_client_identity_and_sets_it_from_the_generated_names():
    code = render_auth_filter([{"sha256": "0" * 64, "id": "key_1", "name": "team-a",
                                "tier": "standard"}])
    assert "IDENTITY_HEADERS = {" + ", ".join(f'\\"{h.value}\\"' for h in IDENTITY) + "}" in code
    assert f'KEY_ID_HEADER = \\"{Header.KEY_ID.value}\\"' in code
    assert f'TIER_HEADER = \\"{Header.TIER.value}\\"' in code
    assert 'KEY_NAME_METADATA = {\\"%s\\", \\"%s\\"}' % KEY_NAME_METADATA in code
    assert not re.search(r'headers:add\("x-llm', (GATEWAY / "auth.lua").read_text())


def test_the_access_log_reads_the_key_name_from_metadata_not_from_a_forwarded_header():
    template = (GATEWAY / "envoy.template.yaml").read_text()
    namespace, key = KEY_NAME_METADATA
    assert f'key_name: "%DYNAMIC_METADATA({namespace}:{key})%"' in template
    assert Header.KEY_NAME not in FORWARDED


def test_the_token_reservation_and_pool_headers_are_the_contracts():
    budget = (GATEWAY / "token_budget.lua").read_text()
    assert f'local RESERVE_HEADER = "{Header.TOKEN_RESERVE.value}"' in budget
    template = (GATEWAY / "envoy.template.yaml").read_text()
    assert f"- header: {{ key: {Header.POOL.value}, value:" in template
