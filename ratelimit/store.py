"""Token buckets and token reservations in Redis, shared by every gateway and service replica.

Each check is one Lua script, so it is atomic across gateways without locks: all buckets a
request touches are refilled by the time passed (Redis' own clock, so service replicas need
no clock agreement), and either all are charged or none is. The service keeps no state of its
own; losing Redis loses only counters (they refill anyway), never configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from .limits import Bucket

PREFIX = "llm:rl:"
# A reservation not settled within this long (its answer never ended, the gateway died)
# is dropped and stays charged.
RESERVATION_TTL_S = 3600

# KEYS: the buckets, then the reservation key (or "" for none). ARGV: the count of buckets,
# then per bucket capacity, refill per second and amount; then the amount to record under
# the reservation key. Returns {1 if charged else 0, level of each bucket before charging}.
_TAKE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local n = tonumber(ARGV[1])
local levels, ok = {}, true
for i = 1, n do
  local capacity, rate, amount = tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i]), tonumber(ARGV[3*i+1])
  local state = redis.call('HMGET', KEYS[i], 'level', 'at')
  local level = tonumber(state[1]) or capacity
  local at = tonumber(state[2]) or now
  level = math.min(capacity, level + math.max(0, now - at) * rate)
  levels[i] = level
  if level < amount then ok = false end
end
local reply = {ok and 1 or 0}
for i = 1, n do
  local capacity, rate, amount = tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i]), tonumber(ARGV[3*i+1])
  local level = levels[i]
  if ok then level = level - amount end
  redis.call('HSET', KEYS[i], 'level', tostring(level), 'at', tostring(now))
  redis.call('EXPIRE', KEYS[i], math.ceil(capacity / rate) + 60)
  reply[i + 1] = tostring(levels[i])
end
if ok and KEYS[n + 1] ~= '' then
  redis.call('SET', KEYS[n + 1], ARGV[3*n + 2], 'EX', tonumber(ARGV[3*n + 3]))
end
return reply
"""

# KEYS: the bucket, the reservation key. ARGV: capacity, refill per second, tokens used.
# Gives back what was reserved beyond the use (or takes the excess), once: a settlement
# without its reservation (expired, or settled already) changes nothing.
_SETTLE = """
local reserved = redis.call('GET', KEYS[2])
if not reserved then return 0 end
redis.call('DEL', KEYS[2])
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local capacity, rate, used = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'level', 'at')
local level = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
level = math.min(capacity, level + math.max(0, now - at) * rate + tonumber(reserved) - used)
redis.call('HSET', KEYS[1], 'level', tostring(level), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 60)
return 1
"""


@dataclass(frozen=True)
class Charge:
    """Take `amount` from the bucket stored under `name`."""

    name: str
    bucket: Bucket
    amount: float


class Store:
    def __init__(self, url: str) -> None:
        # Short timeouts: Envoy waits for this answer on every request.
        self._redis = aioredis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._take = self._redis.register_script(_TAKE)
        self._settle = self._redis.register_script(_SETTLE)

    async def take(self, charges: list[Charge], reservation: tuple[str, int] | None = None
                   ) -> tuple[bool, list[float]]:
        """Charge every bucket or none; on success record `reservation` (request id, tokens).
        Returns whether it was charged and each bucket's level before."""
        keys = [PREFIX + c.name for c in charges]
        keys.append(PREFIX + "reserved:" + reservation[0] if reservation else "")
        args: list[float | int | str] = [len(charges)]
        for c in charges:
            args += [c.bucket.capacity, c.bucket.per_second, c.amount]
        args += [reservation[1] if reservation else 0, RESERVATION_TTL_S]
        reply = await self._take(keys=keys, args=args)
        return reply[0] == 1, [float(level) for level in reply[1:]]

    async def settle(self, name: str, bucket: Bucket, request_id: str, used: int) -> bool:
        """Replace a reservation by the real use; False when there was none to settle."""
        keys = [PREFIX + name, PREFIX + "reserved:" + request_id]
        return await self._settle(keys=keys, args=[bucket.capacity, bucket.per_second,
                                                   used]) == 1

    async def ping(self) -> bool:
        return bool(await self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()
