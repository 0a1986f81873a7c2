"""The descriptors the gateway sends to the rate-limit service: defined once, read by both sides.

Envoy's rate-limit filter sends, per request, a list of descriptors: ordered (key, value)
entries built by the actions in the gateway's config (gateway/render.py builds those actions
from `DESCRIPTORS` below). The first entry of each says which limit it is (`Kind`); the
service (ratelimit/service.py) reads the others by name. A descriptor Envoy cannot complete
(a header missing: no key on /healthz, no reservation on a GET) is not sent at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from contracts.headers import Header


class Kind(str, Enum):
    """Which limit a descriptor asks about."""

    KEY_REQUESTS = "key_requests"          # the key's request bucket (its tier's size)
    GATEWAY_REQUESTS = "gateway_requests"  # one bucket for every request, all gateways
    TOKENS_RESERVE = "tokens_reserve"      # on arrival: reserve prompt + max_tokens
    TOKENS_SETTLE = "tokens_settle"        # when the answer ends: charge what was used


class Entry(str, Enum):
    """Names of the entries after the first."""

    TIER = "tier"
    KEY = "key"
    REQUEST = "request"    # the request id: ties a settlement to its reservation
    RESERVE = "reserve"    # tokens reserved (gateway/token_budget.lua's estimate)
    USED = "used"          # tokens the answer reported (prompt + completion)


# Request headers the gateway's filters set and the descriptors read.
HEADER_OF: dict[Entry, str] = {
    Entry.TIER: Header.TIER.value,
    Entry.KEY: Header.KEY_ID.value,
    Entry.REQUEST: Header.REQUEST_ID.value,
    Entry.RESERVE: Header.TOKEN_RESERVE.value,
}
# Where gateway/token_budget.lua leaves the answer's token count (dynamic metadata).
USAGE_METADATA = ("llm.usage", "tokens")


class Usage(str, Enum):
    """The counts token_budget.lua leaves beside it, under the same namespace, which the
    access logs carry and the per-key usage (ratelimit/usage.py) reads."""

    PROMPT = "prompt_tokens"
    COMPLETION = "completion_tokens"


# The name the gateway's access-log stream to this service carries (its `log_name`).
USAGE_LOG_NAME = "llm_gateway_usage"


def metrics_port(grpc_port: int) -> int:
    """Where the service's /metrics listens unless told (`--metrics-port`): beside its gRPC
    port. The runner reads it too, to point Prometheus there."""
    return grpc_port + 1


@dataclass(frozen=True)
class Descriptor:
    """One descriptor: its kind, the entries after it, and whether Envoy sends it when the
    stream ends instead of when the request arrives."""

    kind: Kind
    entries: tuple[Entry, ...]
    on_stream_done: bool = False


DESCRIPTORS: tuple[Descriptor, ...] = (
    Descriptor(Kind.KEY_REQUESTS, (Entry.TIER, Entry.KEY)),
    Descriptor(Kind.GATEWAY_REQUESTS, (Entry.KEY,)),  # the key only gates it: no key, no call
    Descriptor(Kind.TOKENS_RESERVE, (Entry.TIER, Entry.KEY, Entry.REQUEST, Entry.RESERVE)),
    Descriptor(Kind.TOKENS_SETTLE, (Entry.TIER, Entry.KEY, Entry.REQUEST, Entry.RESERVE,
                                    Entry.USED), on_stream_done=True),
)

# The rate-limit domain both sides use.
DOMAIN = "llm"
# On a refusal the service names the limit (a `Kind`) under this key of the filter's dynamic
# metadata, so the gateway keeps the service's explanation as the error message.
LIMITED_BY = "limited_by"
