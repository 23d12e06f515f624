"""Whose request goes next: start-time fair queuing over keys, and a request's claim to its place.

Two queues order waiting requests the same way, priority first (lower runs sooner), then each key's fair
share, then arrival: admission's wait for a slot (gateway.middleware.admission) and a route's hold while none
of its instances is routable (gateway.routing.holding). Admission names the request's claim (`claim_as`) and
the route reads it here (`claim`), so the lower layer learns the priority and the key without importing upwards.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


class FairShare:
    """Start-time fair queuing over keys: a key's next request starts where its previous one finished, or
    where service is now if that is later, and finishes 1/weight later. Served smallest start first, each key
    gets a share of the slots in proportion to its weight, and a flood waits behind its own requests."""

    def __init__(self) -> None:
        self.now = 0.0  # the start tag of the request served last
        self.finish: dict[str, float] = {}  # key -> the finish tag of its last request

    def start(self, key: str) -> float:
        return max(self.now, self.finish.get(key, 0.0))

    def take(self, key: str, weight: int) -> float:
        start = self.start(key)
        self.finish[key] = start + 1.0 / weight
        return start

    def served(self, start: float) -> None:
        self.now = max(self.now, start)
        if len(self.finish) > 1024:  # keys behind service now would start at `now` anyway
            self.finish = {key: tag for key, tag in self.finish.items() if tag > self.now}


@dataclass(frozen=True)
class Claim:
    """What a request's place in a queue is ordered by: its priority, its key's name and fair-share weight."""

    priority: int = 0
    key: str = ""
    weight: int = 1


_UNCLAIMED = Claim()
_CLAIM: ContextVar[Claim | None] = ContextVar("tokenyard_claim", default=None)


def claim_as(claim: Claim) -> None:
    """The request running in this context is ordered by `claim` (set by the admission middleware)."""
    _CLAIM.set(claim)


def claim() -> Claim:
    """The claim of the request running in this context (priority 0, no key, weight 1 when none was named)."""
    return _CLAIM.get() or _UNCLAIMED
