"""Rate-limit buckets and token budgets per key: in this process (memory) or shared by every router replica (redis).

`admit` is one step: the key's day and month budgets are checked, then its requests and tokens buckets; when all
allow the request, one request and its estimated tokens are taken from the buckets and its reservation (the most
it may use) is charged to the key's day and month, else nothing is. A budget admits a request whose max_tokens
is known only while its reservation fits in what is left; one without max_tokens (which may generate up to the
model's context) while anything is left, and then it holds all that is left (up to its context), so the requests
after it wait until it ends. So requests in flight together overshoot a budget by at most what those without
max_tokens generate past the budget, never by their number. `settle` corrects both charges to what was used
once the answer is over (a failed request gets it all back).
With redis each is one Lua script, so one round trip and atomic across replicas; the buckets run on Redis's own
clock (TIME), so replicas need not agree on the time. Budget periods are UTC days and months, named by the router.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from gateway.settings import LimitSettings

PERIODS = ("day", "month")
_MAX_IDENTITIES = 10_000  # memory: buckets kept; the least recently seen go first (a refilled bucket is a new one)


class StoreUnavailable(Exception):
    """The shared store could not be reached; the limits middleware serves or refuses as configured."""


@dataclass(frozen=True)
class KeyLimits:
    """A key's limits; None: none of that kind."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None

    def over(self, defaults: KeyLimits) -> KeyLimits:
        """These limits where set, else the defaults."""
        own = {name: value for name, value in vars(self).items() if value is not None}
        return replace(defaults, **own)

    def budget(self, period: str) -> int | None:
        value: int | None = getattr(self, f"tokens_per_{period}")
        return value

    @property
    def per_minute(self) -> tuple[int | None, int | None]:
        return self.requests_per_minute, self.tokens_per_minute


@dataclass(frozen=True)
class Window:
    """One budget period: which day or month it is, and when the next begins."""

    period: str
    name: str  # 2026-12-05, 2026-12
    resets_at: datetime

    @property
    def resets_at_text(self) -> str:
        return self.resets_at.strftime("%Y-%m-%dT%H:%M:%SZ")


def windows(now: datetime) -> tuple[Window, Window]:
    day = datetime(now.year, now.month, now.day, tzinfo=UTC)
    next_month = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    return (
        Window("day", day.strftime("%Y-%m-%d"), day + timedelta(days=1)),
        Window("month", day.strftime("%Y-%m"), next_month),
    )


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Decision:
    """What admit found. The levels are the buckets' after taking (or as they stand, when refused)."""

    allowed: bool
    wait_s: float = 0.0  # rate limited: until the buckets allow it
    over_budget: Window | None = None  # the period whose budget is spent, or too short for the reservation
    requests_left: float | None = None
    tokens_left: float | None = None
    budget_left: int = 0  # over budget: what that budget had left
    reserved: int | None = None  # admitted: what was charged to the budgets (the charge's reservation, or less)


@dataclass(frozen=True)
class Charge:
    """What one admitted request was charged, for settle."""

    identity: str
    limits: KeyLimits
    cost: int  # the estimate, taken from the tokens bucket
    periods: tuple[Window, Window] | None  # None: no usage kept (a client address, not a key)
    reserve: int | None = None  # the most it may use, charged to the budgets until settled; None: `cost`
    fill: bool = False  # the reservation may shrink to what the budgets have left (no max_tokens: Decision.reserved)

    @property
    def reserved(self) -> int:
        return self.cost if self.reserve is None else self.reserve

    def budget_refund(self, refund: int) -> int:
        """What goes back to the budgets when `refund` goes back to the tokens bucket (cost less what was used)."""
        return refund + self.reserved - self.cost


@dataclass(frozen=True)
class PeriodUsage:
    window: Window
    tokens: int
    requests: int
    budget: int | None

    def as_json(self) -> dict[str, Any]:
        remaining = None if self.budget is None else max(0, self.budget - self.tokens)
        return {
            "period": self.window.period,
            "started": self.window.name,
            "tokens": self.tokens,
            "requests": self.requests,
            "budget_tokens": self.budget,
            "remaining_tokens": remaining,
            "resets_at": self.window.resets_at_text,
        }


class LimitStore(Protocol):
    async def admit(self, charge: Charge) -> Decision: ...

    async def settle(self, charge: Charge, refund: int) -> None: ...

    async def usage(self, identity: str, limits: KeyLimits) -> list[PeriodUsage]: ...

    async def close(self) -> None: ...


# --- memory ------------------------------------------------------------------------------------------
class TokenBucket:
    def __init__(self, per_minute: int, now: float) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.level, self.updated = float(per_minute), now

    def _refill(self, now: float) -> None:
        self.level = min(float(self.per_minute), self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_s(self, cost: int, now: float) -> float:
        """Seconds until `cost` can be taken. A cost above the whole bucket waits only for a full one."""
        self._refill(now)
        need = min(cost, self.per_minute)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, cost: int, now: float) -> None:
        self._refill(now)
        self.level -= cost  # may go below zero: a big request makes its key wait longer afterwards

    def refund(self, amount: int, now: float) -> None:
        self._refill(now)
        self.level = min(float(self.per_minute), self.level + amount)


@dataclass
class Buckets:
    requests: TokenBucket | None
    tokens: TokenBucket | None

    def levels(self) -> tuple[float | None, float | None]:
        return (self.requests.level if self.requests else None), (self.tokens.level if self.tokens else None)


def _per_minute(bucket: TokenBucket | None) -> int | None:
    return bucket.per_minute if bucket else None


class MemoryStore:
    """This process's own buckets and counters: each router replica has its own, and a restart forgets them."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], datetime] = utc_now) -> None:
        self.clock, self.wall = clock, wall
        self._buckets: OrderedDict[str, Buckets] = OrderedDict()
        self._usage: dict[tuple[str, str], list[Any]] = {}  # (identity, period) -> [period name, tokens, requests]

    def buckets(self, identity: str, limits: KeyLimits) -> Buckets:
        rpm, tpm = limits.per_minute
        found = self._buckets.get(identity)
        now = self.clock()
        if found is None or (_per_minute(found.requests), _per_minute(found.tokens)) != (rpm, tpm):
            # New, or its key's limits changed in the keys file: start it afresh.
            found = Buckets(TokenBucket(rpm, now) if rpm else None, TokenBucket(tpm, now) if tpm else None)
            self._buckets[identity] = found
        self._buckets.move_to_end(identity)
        while len(self._buckets) > _MAX_IDENTITIES:
            self._buckets.popitem(last=False)
        return found

    def _counter(self, identity: str, window: Window) -> list[Any]:
        counter = self._usage.get((identity, window.period))
        if counter is None or counter[0] != window.name:  # a new day or month starts from zero
            counter = self._usage[(identity, window.period)] = [window.name, 0, 0]
        return counter

    async def admit(self, charge: Charge) -> Decision:
        take = charge.reserved
        for window in charge.periods or ():
            budget = charge.limits.budget(window.period)
            left = None if budget is None else budget - self._counter(charge.identity, window)[1]
            if left is not None and (left <= 0 or (take > left and not charge.fill)):
                return Decision(False, over_budget=window, budget_left=max(0, left))
            take = take if left is None else min(take, left)
        buckets, now = self.buckets(charge.identity, charge.limits), self.clock()
        wait_s = max(
            buckets.requests.wait_s(1, now) if buckets.requests else 0.0,
            buckets.tokens.wait_s(charge.cost, now) if buckets.tokens else 0.0,
        )
        if wait_s > 0:
            return Decision(False, wait_s, None, *buckets.levels())
        for bucket, cost in ((buckets.requests, 1), (buckets.tokens, charge.cost)):
            if bucket:
                bucket.take(cost, now)
        for window in charge.periods or ():
            counter = self._counter(charge.identity, window)
            counter[1] += take
            counter[2] += 1
        return Decision(True, 0.0, None, *buckets.levels(), reserved=take)

    async def settle(self, charge: Charge, refund: int) -> None:
        tokens = self.buckets(charge.identity, charge.limits).tokens
        if tokens:
            tokens.refund(refund, self.clock())
        for window in charge.periods or ():
            counter = self._usage.get((charge.identity, window.period))
            if counter is not None and counter[0] == window.name:
                counter[1] -= charge.budget_refund(refund)

    async def usage(self, identity: str, limits: KeyLimits) -> list[PeriodUsage]:
        found = []
        for window in windows(self.wall()):
            counter = self._usage.get((identity, window.period))
            tokens, requests = (counter[1], counter[2]) if counter and counter[0] == window.name else (0, 0)
            found.append(PeriodUsage(window, tokens, requests, limits.budget(window.period)))
        return found

    async def close(self) -> None:
        return None


def reset_s(limit: int, level: float) -> float:
    """Seconds until a bucket at `level` is full again."""
    return max(0.0, (limit - level) * 60.0 / limit)


def floor_level(level: float) -> int:
    return max(0, math.floor(level))


def default_limits(limits: LimitSettings) -> KeyLimits:
    """Every key's limits and budgets where the key sets none of its own."""
    return KeyLimits(
        limits.requests_per_minute, limits.tokens_per_minute, limits.tokens_per_day, limits.tokens_per_month
    )
