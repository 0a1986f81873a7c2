"""Envoy's rate-limit service (envoy.service.ratelimit.v3.RateLimitService) over Redis.

Envoy asks once when a request arrives (the key's request bucket, the gateway-wide bucket,
the key's token budget: reserve the request's estimate) and once when the answer ends (settle
the reservation to the tokens the answer reported). The answer is OVER_LIMIT when any bucket
is short; then nothing is charged, and Envoy answers 429 with the body and `x-ratelimit-*`
headers this service sets. When Redis cannot be reached the call fails (gRPC UNAVAILABLE) and
the gateway's failure policy decides: fail open (let the request through: the local limits
still hold per gateway) or closed (503).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from redis.exceptions import RedisError

from .contract import DOMAIN, LIMITED_BY, Entry, Kind
from .limits import TierLimits
from .metrics import ServiceMetrics
from .store import Charge, Store

LOG = logging.getLogger("ratelimit")
Code = rls_pb2.RateLimitResponse.Code
# The budgets answers report, by the suffix of their headers.
HEADER_NAMES = {Kind.KEY_REQUESTS: "requests", Kind.TOKENS_RESERVE: "tokens"}
Unit = rls_pb2.RateLimitResponse.RateLimit.Unit


@dataclass
class Check:
    """What one descriptor asks, and how to report it."""

    kind: Kind
    charge: Optional[Charge]  # None: no limit applies (unknown tier, no token quota)
    name: str                 # the limit's name in x-ratelimit-* headers
    unit: int = Unit.SECOND
    per_unit: int = 0
    level: float = 0.0
    reservation: str = ""  # the token reservation's id, for TOKENS_RESERVE


def _reservation_id(entries: dict[str, str]) -> str:
    """A token reservation's id: the key's and the request's, so no key settles another's."""
    return f"{entries[Entry.KEY.value]}:{entries[Entry.REQUEST.value]}"


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):
    def __init__(self, limits: TierLimits, store: Store,
                 metrics: Optional[ServiceMetrics] = None) -> None:
        self.limits, self.store = limits, store
        self.metrics = metrics or ServiceMetrics()

    async def ShouldRateLimit(self, request: rls_pb2.RateLimitRequest,
                              context: grpc.aio.ServicerContext) -> rls_pb2.RateLimitResponse:
        if request.domain != DOMAIN:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"unknown domain {request.domain!r}; this service serves "
                                f"{DOMAIN!r}")
        checks, settlements = [], []
        for descriptor in request.descriptors:
            entries = {e.key: e.value for e in descriptor.entries}
            kind = Kind(descriptor.entries[0].value)
            if kind is Kind.TOKENS_SETTLE:
                settlements.append(entries)
            checks.append(self._check(kind, entries, request.hits_addend or 1))
        try:
            for entries in settlements:
                await self.metrics.timed("settle", lambda: self._settle(entries))
            return await self._decide(checks)
        except (RedisError, OSError) as exc:
            LOG.warning("redis unreachable: %s", exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"redis unreachable: {exc}")
            raise  # abort() raises; this line only tells type checkers so

    def _check(self, kind: Kind, entries: dict[str, str], hits: int) -> Check:
        tier = self.limits.tiers.get(entries.get(Entry.TIER.value, ""))
        key = entries.get(Entry.KEY.value, "")
        if kind is Kind.GATEWAY_REQUESTS:
            bucket = self.limits.gateway
            return Check(kind, Charge("gateway", bucket, hits), "gateway",
                         per_unit=int(bucket.per_second))
        if kind is Kind.KEY_REQUESTS and tier is not None:
            bucket = tier.requests
            return Check(kind, Charge(f"key:{key}", bucket, hits), "requests",
                         per_unit=int(bucket.per_second))
        if kind is Kind.TOKENS_RESERVE and tier is not None and tier.tokens is not None:
            # A request that could never fit waits for a full bucket rather than forever.
            amount = min(int(entries.get(Entry.RESERVE.value, "0") or 0), tier.tokens.capacity)
            return Check(kind, Charge(f"tokens:{key}", tier.tokens, amount), "tokens",
                         Unit.MINUTE, tier.tokens_per_minute,
                         reservation=_reservation_id(entries))
        return Check(kind, None, kind.value)

    async def _settle(self, entries: dict[str, str]) -> None:
        tier = self.limits.tiers.get(entries.get(Entry.TIER.value, ""))
        if tier is None or tier.tokens is None:
            return
        await self.store.settle(f"tokens:{entries[Entry.KEY.value]}", tier.tokens,
                                _reservation_id(entries), int(entries.get(Entry.USED.value) or 0))

    async def _decide(self, checks: list[Check]) -> rls_pb2.RateLimitResponse:
        charged = [c for c in checks if c.charge is not None]
        reservation = next(((c.reservation, int(c.charge.amount)) for c in charged
                            if c.reservation and c.charge), None)
        ok, levels = (await self.metrics.timed("take", lambda: self.store.take(
            [c.charge for c in charged if c.charge], reservation)) if charged else (True, []))
        for check, level in zip(charged, levels):
            check.level = level
            short = check.charge is not None and level < check.charge.amount
            self.metrics.decisions.labels(check.kind.value,
                                          "over_limit" if short else "ok").inc()
        response = rls_pb2.RateLimitResponse(overall_code=Code.OK if ok else Code.OVER_LIMIT)
        for check in checks:
            response.statuses.append(self._status(check, ok))
        for check in charged:
            if check.kind in HEADER_NAMES:
                self._budget_headers(response, check, ok)
        if not ok:
            short = min(charged, key=lambda c: c.level - (c.charge.amount if c.charge else 0))
            assert short.charge is not None
            wait = max(1, math.ceil(short.charge.bucket.seconds_until(short.level,
                                                                      short.charge.amount)))
            response.raw_body = self._refusal(short, wait).encode()
            response.dynamic_metadata.update({LIMITED_BY: short.kind.value})
            response.response_headers_to_add.append(
                base_pb2.HeaderValue(key="retry-after", value=str(wait)))
        return response

    @staticmethod
    def _status(check: Check, ok: bool) -> rls_pb2.RateLimitResponse.DescriptorStatus:
        status = rls_pb2.RateLimitResponse.DescriptorStatus(code=Code.OK)
        if check.charge is None:
            return status
        bucket, amount = check.charge.bucket, check.charge.amount
        left = check.level - amount if ok else check.level
        status.code = Code.OK if check.level >= amount else Code.OVER_LIMIT
        status.current_limit.name = check.name
        status.current_limit.requests_per_unit = max(check.per_unit, 1)
        status.current_limit.unit = check.unit
        status.limit_remaining = max(0, math.floor(left))
        wait = bucket.seconds_until(left, amount if status.code == Code.OVER_LIMIT
                                    else bucket.capacity)
        status.duration_until_reset.seconds = max(1, math.ceil(wait))
        return status

    @staticmethod
    def _budget_headers(response: rls_pb2.RateLimitResponse, check: Check, ok: bool) -> None:
        """The shared budgets under OpenAI's names: x-ratelimit-{limit,remaining,reset}-
        {requests,tokens} (the gateway's own x-ratelimit-* describe its local first line)."""
        assert check.charge is not None
        left = check.level - check.charge.amount if ok else check.level
        wait = check.charge.bucket.seconds_until(max(left, 0), check.charge.amount)
        limit = check.per_unit if check.kind is Kind.TOKENS_RESERVE else \
            int(check.charge.bucket.capacity)
        suffix = HEADER_NAMES[check.kind]
        for name, value in ((f"x-ratelimit-limit-{suffix}", limit),
                            (f"x-ratelimit-remaining-{suffix}", max(0, math.floor(left))),
                            (f"x-ratelimit-reset-{suffix}", f"{math.ceil(wait)}s")):
            response.response_headers_to_add.append(
                base_pb2.HeaderValue(key=name, value=str(value)))

    @staticmethod
    def _refusal(check: Check, wait: int) -> str:
        """The message of a refusal by `check`, which the budget covers again in `wait` s."""
        assert check.charge is not None
        if check.kind is Kind.TOKENS_RESERVE:
            return (f"token quota exceeded for this API key: this request reserves "
                    f"{int(check.charge.amount)} tokens (prompt bytes + max_tokens) and "
                    f"{max(0, math.floor(check.level))} of the tier's {check.per_unit} tokens "
                    f"per minute are left; retry after {wait} s")
        if check.kind is Kind.GATEWAY_REQUESTS:
            return ("the gateway's overall request rate is exceeded; retry after `Retry-After` "
                    "seconds")
        return "rate limit exceeded for this API key; retry after `Retry-After` seconds"
