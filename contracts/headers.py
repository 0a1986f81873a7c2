"""The request headers the gateway sets for the services behind it: the one list.

The gateway drops any client copy of `IDENTITY` before it authenticates, then sets the
caller's identity from the key store (gateway/auth.lua, whose list render.py generates from
here). Upstream, Triton's models read `FORWARDED` (the generate routes carry them as request
parameters, gateway/generate_parameters.lua; tests/contracts/test_headers.py checks that copy)
and the OpenAI frontend passes the same on to Triton. The key's name is not forwarded: only the
gateway's access log shows it, from dynamic metadata (`KEY_NAME_METADATA`).
"""

from __future__ import annotations

from enum import Enum


class Header(str, Enum):
    REQUEST_ID = "x-request-id"            # the client's (when plain) or the gateway's
    KEY_ID = "x-llm-key-id"                # the caller's key id (never the key)
    KEY_NAME = "x-llm-key-name"            # reserved: a client copy is dropped, none is set
    TIER = "x-llm-tier"                    # the key's tier (tiers.yaml)
    TOKEN_RESERVE = "x-llm-token-reserve"  # tokens a generation may cost (token_budget.lua)
    POOL = "x-llm-pool"                    # on answers: the replica pool that served
    ADAPTER = "x-llm-adapter"              # the client's: the LoRA adapter to run
    MODELS = "x-llm-models"                # the models a limited key may use (keys.py MODELS)


# Set only by the gateway; a client's copy is dropped before authentication.
IDENTITY: tuple[Header, ...] = (Header.KEY_ID, Header.KEY_NAME, Header.TIER, Header.MODELS)

# What the services behind the gateway read, in this order.
FORWARDED: tuple[Header, ...] = (Header.REQUEST_ID, Header.KEY_ID, Header.TIER, Header.ADAPTER,
                                 Header.MODELS)

# In `MODELS` as forwarded (gateway/model_access.lua rewrites the key's list): the base model,
# whatever its served name; no adapter may be called so (adapter names start with a letter
# or digit).
BASE_MODEL_TOKEN = "-"

# Triton's --http/--grpc-header-forward-pattern: the forwarded headers become request parameters.
FORWARD_PATTERN = "x-(" + "|".join(h.value.removeprefix("x-") for h in FORWARDED) + ")"

# Where auth.lua leaves the key's name for the access log (namespace, key).
KEY_NAME_METADATA = ("llm.gateway", "key_name")
