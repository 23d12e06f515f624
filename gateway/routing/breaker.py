"""A circuit breaker per instance: closed -> open after consecutive failures -> half-open after a cooldown.

Half-open lets exactly one request through as a probe: its success closes the breaker, its failure
opens it again for another cooldown. The breaker only decides; callers report outcomes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum


class BreakerState(IntEnum):
    # The values are what tokenyard_breaker_state exports.
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class Breaker:
    def __init__(self, failures_to_open: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures_to_open = failures_to_open
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.state = BreakerState.CLOSED
        self.failures = 0  # consecutive
        self._opened_at = 0.0
        self._probing = False

    def available(self) -> bool:
        """May a request be sent now? (Asking changes nothing; `acquire` does.)"""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            return self.clock() - self._opened_at >= self.cooldown_s
        return not self._probing

    def acquire(self) -> None:
        """A request was sent: past the cooldown it is the half-open probe."""
        if self.state is BreakerState.OPEN and self.clock() - self._opened_at >= self.cooldown_s:
            self.state = BreakerState.HALF_OPEN
        if self.state is BreakerState.HALF_OPEN:
            self._probing = True

    def success(self) -> None:
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._probing = False

    def failure(self) -> None:
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.failures_to_open:
            self.state = BreakerState.OPEN
            self._opened_at = self.clock()
        self._probing = False

    def release(self) -> None:
        """The request ended with no verdict (the client left): let another request probe."""
        self._probing = False
