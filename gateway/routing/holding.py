"""A route's held requests, released in the admission order when an instance becomes routable.

While none of a route's instances is routable (it is starting, scaled to zero, or every instance is down),
its requests are held (gateway.routing.adapter). They have passed admission already, so they are ordered as
admission orders its waiters: priority first (lower sooner), then start-time fair queuing over keys (each
key's weight from its scope: gateway.fair_share), then arrival. The request's claim comes from the admission
middleware through gateway.fair_share's context variable.

`release` hands the held requests their turn one by one in that order: each is a future set in order, so
asyncio resumes the held tasks in that order, and each chooses its instance and starts sending before the
next one runs.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field

from gateway.fair_share import Claim, FairShare


@dataclass(order=True)
class Place:
    priority: int
    start: float  # its fair-share start tag: within a priority, the smallest goes first
    seq: int
    key: str = field(compare=False)
    turn: asyncio.Future[None] = field(compare=False)


class HeldQueue:
    def __init__(self) -> None:
        self._heap: list[Place] = []  # may keep places whose holder left, until they come up
        self._seq = itertools.count()
        self._share = FairShare()

    def join(self, claim: Claim) -> Place:
        start = self._share.take(claim.key, claim.weight)
        place = Place(claim.priority, start, next(self._seq), claim.key, asyncio.get_running_loop().create_future())
        heapq.heappush(self._heap, place)
        return place

    def leave(self, place: Place) -> None:
        """A held request gives up (its hold timed out, its client left); its place is skipped at release."""
        if not place.turn.done():
            place.turn.cancel()

    def release(self) -> list[Place]:
        """Every held request's turn, most urgent first, then by fair share over keys, then arrival; the
        places released, in that order."""
        released = []
        while self._heap:
            place = heapq.heappop(self._heap)
            if place.turn.done():
                continue
            self._share.served(place.start)
            place.turn.set_result(None)
            released.append(place)
        return released

    def __len__(self) -> int:
        return sum(not place.turn.done() for place in self._heap)
