"""The limit store in Redis, shared by every router replica: one Lua script per admit and one per settle.

Keys, all of one key's in one hash slot (`{identity}`), so the scripts also run on a Redis Cluster:
    tokenyard:{identity}:requests   bucket: level, at (Redis TIME), limit; expires once full again
    tokenyard:{identity}:tokens     the same for tokens
    tokenyard:{identity}:day:<date> usage: tokens, requests; expires a day after its period ends
    tokenyard:{identity}:month:<yyyy-mm>
Any Redis or connection error becomes StoreUnavailable; the client reconnects on the next call by itself.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.limit_store import Charge, Decision, KeyLimits, PeriodUsage, StoreUnavailable, Window, windows

_KEEP_AFTER_PERIOD = timedelta(days=1)

# A bucket's level as of now: full when new, expired, unreadable or its limit changed; refilled at limit/60 a
# second. A value that is not a finite number (written by hand, or by anything but these scripts) counts as
# missing and is written afresh, so it can neither stop the script (a key unlimited for good) nor block a key.
_BUCKET = """
local function finite(text)
  local value = tonumber(text)
  if value == nil or value ~= value or value == math.huge or value == -math.huge then return nil end
  return value
end
local function count(key, field)
  local value = finite(redis.call('HGET', key, field) or '0')
  if value == nil or value ~= math.floor(value) then
    redis.call('HSET', key, field, '0')
    return 0
  end
  return value
end
local function level(key, limit, now)
  if limit == 0 then return nil end
  local saved = redis.call('HMGET', key, 'level', 'at', 'limit')
  local lvl, at = finite(saved[1]), finite(saved[2])
  if not lvl or not at or tonumber(saved[3]) ~= limit then return limit end
  return math.min(limit, lvl + math.max(0, now - at) * limit / 60)
end
local function save(key, lvl, limit, now)
  if lvl == nil then return end
  redis.call('HSET', key, 'level', tostring(lvl), 'at', tostring(now), 'limit', limit)
  redis.call('EXPIRE', key, math.ceil((limit - lvl) * 60 / limit) + 1)
end
local function text(lvl) if lvl == nil then return '' end return tostring(lvl) end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
"""

# KEYS: requests bucket, tokens bucket, day usage, month usage.
# ARGV: rpm, tpm, cost, day budget, month budget (0: none), day ttl, month ttl, keep usage (1/0), reservation,
# fill (1: the reservation may shrink to what is left; limit_store.Charge.fill).
# Returns {'ok' | 'rate_limited' | 'over_budget', wait_s or period index, requests level or budget left, tokens level,
# reserved}.
ADMIT = (
    _BUCKET
    + """
local rpm, tpm, cost, take = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[9])
local keep = ARGV[8] == '1'
if keep then
  for i = 1, 2 do
    local budget = tonumber(ARGV[3 + i])
    count(KEYS[2 + i], 'requests')
    local left = budget - count(KEYS[2 + i], 'tokens')
    if budget > 0 and (left <= 0 or (take > left and ARGV[10] ~= '1')) then
      return {'over_budget', tostring(i), tostring(math.max(0, left)), '', ''}
    end
    if budget > 0 and take > left then take = left end
  end
end
local r, t = level(KEYS[1], rpm, now), level(KEYS[2], tpm, now)
local wait = 0
if r and r < 1 then wait = (1 - r) * 60 / rpm end
if t and t < math.min(cost, tpm) then wait = math.max(wait, (math.min(cost, tpm) - t) * 60 / tpm) end
if wait > 0 then return {'rate_limited', tostring(wait), text(r), text(t), ''} end
if r then r = r - 1 end
if t then t = t - cost end
save(KEYS[1], r, rpm, now)
save(KEYS[2], t, tpm, now)
if keep then
  for i = 1, 2 do
    redis.call('HINCRBY', KEYS[2 + i], 'tokens', take)
    redis.call('HINCRBY', KEYS[2 + i], 'requests', 1)
    redis.call('EXPIRE', KEYS[2 + i], ARGV[5 + i])
  end
end
return {'ok', '0', text(r), text(t), tostring(take)}
"""
)

# KEYS: tokens bucket, day usage, month usage. ARGV: refund to the bucket (negative: charge more), tpm, keep usage
# (1/0), refund to the budgets (the reservation less what was used).
SETTLE = (
    _BUCKET
    + """
local refund, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = level(KEYS[1], tpm, now)
if t then save(KEYS[1], math.min(tpm, t + refund), tpm, now) end
if ARGV[3] == '1' then
  for i = 2, 3 do
    if redis.call('EXISTS', KEYS[i]) == 1 then
      count(KEYS[i], 'tokens')
      redis.call('HINCRBY', KEYS[i], 'tokens', -tonumber(ARGV[4]))
    end
  end
end
return 1
"""
)


def _key(identity: str, part: str) -> str:
    return f"tokenyard:{{{identity}}}:{part}"


def _usage_key(identity: str, window: Window) -> str:
    return _key(identity, f"{window.period}:{window.name}")


def _ttl_s(window: Window) -> int:
    return int((window.resets_at + _KEEP_AFTER_PERIOD - datetime.now(UTC)).total_seconds()) + 1


def _level(text: bytes) -> float | None:
    return float(text) if text else None


def _count(text: bytes | None) -> int:
    """A usage counter as read: one that is not an integer counts as none (admit rewrites it)."""
    try:
        return int(text or 0)
    except ValueError:
        return 0


class RedisStore:
    def __init__(self, url: str, timeout_s: float) -> None:
        # No retries inside the client: a failed call is answered at once (fail open or closed), and the
        # next request tries again on a fresh connection.
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._admit = self.client.register_script(ADMIT)
        self._settle = self.client.register_script(SETTLE)

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(type(exc).__name__) from None  # the message may hold the URL

    async def admit(self, charge: Charge) -> Decision:
        limits, day, month = charge.limits, *_periods(charge)
        keys = [
            _key(charge.identity, "requests"),
            _key(charge.identity, "tokens"),
            _usage_key(charge.identity, day),
            _usage_key(charge.identity, month),
        ]
        args = [
            limits.requests_per_minute or 0,
            limits.tokens_per_minute or 0,
            charge.cost,
            limits.tokens_per_day or 0,
            limits.tokens_per_month or 0,
            _ttl_s(day),
            _ttl_s(month),
            int(charge.periods is not None),
            charge.reserved,
            int(charge.fill),
        ]
        verdict, figure, requests, tokens, reserved = await self._run(self._admit, keys, args)
        if verdict == b"over_budget":
            return Decision(False, over_budget=(day, month)[int(figure) - 1], budget_left=int(requests))
        taken = int(reserved) if reserved else None
        return Decision(verdict == b"ok", float(figure), None, _level(requests), _level(tokens), reserved=taken)

    async def settle(self, charge: Charge, refund: int) -> None:
        day, month = _periods(charge)
        keys = [_key(charge.identity, "tokens"), _usage_key(charge.identity, day), _usage_key(charge.identity, month)]
        args = [
            refund,
            charge.limits.tokens_per_minute or 0,
            int(charge.periods is not None),
            charge.budget_refund(refund),
        ]
        await self._run(self._settle, keys, args)

    async def usage(self, identity: str, limits: KeyLimits) -> list[PeriodUsage]:
        now_windows = windows(datetime.now(UTC))
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for window in now_windows:
                    pipe.hmget(_usage_key(identity, window), "tokens", "requests")
                found = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(type(exc).__name__) from None
        return [
            PeriodUsage(window, _count(tokens), _count(requests), limits.budget(window.period))
            for window, (tokens, requests) in zip(now_windows, found)
        ]

    async def close(self) -> None:
        await self.client.aclose()


def _periods(charge: Charge) -> tuple[Window, Window]:
    return charge.periods or windows(datetime.now(UTC))
