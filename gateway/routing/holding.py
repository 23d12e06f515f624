"""A route's held requests, served in the admission order when an instance becomes routable.

While none of a route's instances is routable (it is starting, scaled to zero, or every instance is down),
its requests are held (gateway.routing.adapter). They have passed admission already, so they are ordered as
admission orders its waiters: priority first (lower sooner), then start-time fair queuing over keys (each
key's weight from its scope: gateway.fair_share), then arrival. The request's claim comes from the admission
middleware through gateway.fair_share's context variable.

When an instance may have become routable, `release` gives the first held request its turn; that request
chooses its instance and passes the turn on (`pass_on`), so the held go one by one, each dispatched before
the next runs. A request whose turn comes while no instance is routable again keeps its place, and the turns
stop until the next release.
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
    turn: asyncio.Future[None] = field(compare=False)  # done when its turn comes (cancelled when it left)


class HeldQueue:
    def __init__(self) -> None:
        self._heap: list[Place] = []  # may keep places whose holder left, until they come up
        self._seq = itertools.count()
        self._share = FairShare()
        self._turn: Place | None = None  # whose turn it is, until it passes the turn on

    def join(self, claim: Claim) -> Place:
        start = self._share.take(claim.key, claim.weight)
        return self._push(Place(claim.priority, start, next(self._seq), _future()))

    def release(self) -> None:
        """An instance may be routable: the first held request's turn, unless the turns go round already."""
        if self._turn is None:
            self._next()

    def pass_on(self, place: Place) -> None:
        """`place` has chosen its instance (or left): the next held request's turn."""
        if self._turn is place:
            self._next()

    def hold_again(self, place: Place) -> Place:
        """Its turn came, but no instance is routable now: it keeps its place, and the turns stop."""
        if self._turn is place:
            self._turn = None
        return self._push(Place(place.priority, place.start, place.seq, _future()))

    def leave(self, place: Place) -> None:
        """A held request gives up (its hold timed out, its client left): skipped, or its turn passed on."""
        if not place.turn.done():
            place.turn.cancel()
        self.pass_on(place)

    def __len__(self) -> int:
        return sum(not place.turn.done() for place in self._heap)

    def _push(self, place: Place) -> Place:
        heapq.heappush(self._heap, place)
        return place

    def _next(self) -> None:
        self._turn = None
        while self._heap:
            place = heapq.heappop(self._heap)
            if place.turn.done():
                continue
            self._share.served(place.start)
            self._turn = place
            place.turn.set_result(None)
            return


def _future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()
