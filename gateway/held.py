"""Bytes of the requests held waiting, bounded (limits.max_held_bytes): for an admission slot
(gateway.middleware.admission) or for a route's instance to become ready (gateway.routing.adapter).

A held request keeps its body for as long as it waits (up to the hold timeout, 300 s by default), so its bytes,
not their number, are what a client can pin. The body middleware names each request's size (`held_as`); the
two places that hold requests take those bytes from the one bound while they wait, and refuse a request that
would pass it with 503 and a Retry-After.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from gateway.errors import EngineUnavailable

RETRY_AFTER_S = 5.0  # held requests come and go within seconds: a little later there is room again


class HeldBytes:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.now = 0  # bytes of the requests waiting now

    @contextmanager
    def holding(self, size: int) -> Iterator[None]:
        if size and self.now + size > self.limit:
            raise EngineUnavailable(
                f"Too many requests are waiting here (their bodies pass limits.max_held_bytes, {self.limit} bytes); "
                "retry later.",
                code="server_overloaded",
                retry_after_s=RETRY_AFTER_S,
            )
        self.now += size
        try:
            yield
        finally:
            self.now -= size


@dataclass(frozen=True)
class _Held:
    bound: HeldBytes
    size: int


_CURRENT: ContextVar[_Held | None] = ContextVar("tokenyard_held", default=None)


def held_as(bound: HeldBytes, size: int) -> None:
    """The request running in this context holds `size` bytes while it waits (set by the body middleware)."""
    _CURRENT.set(_Held(bound, size))


@contextmanager
def waiting() -> Iterator[None]:
    """While the request in this context waits: its bytes count against the bound (or it is refused now)."""
    held = _CURRENT.get()
    if held is None:
        yield
        return
    with held.bound.holding(held.size):
        yield
