"""The breaker's states: closed -> open after N failures -> one half-open probe after the cooldown."""

from __future__ import annotations

from gateway.routing.breaker import Breaker, BreakerState


def state(breaker: Breaker) -> BreakerState:
    return breaker.state  # read through a call, so the type checker does not narrow it across calls


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures() -> None:
    breaker = Breaker(3, cooldown_s=5, clock=Clock())
    breaker.failure()
    breaker.failure()
    breaker.success()  # not consecutive any more
    breaker.failure()
    breaker.failure()
    assert state(breaker) is BreakerState.CLOSED and breaker.available()
    breaker.failure()
    assert state(breaker) is BreakerState.OPEN and not breaker.available()


def test_half_open_lets_one_probe_through() -> None:
    clock = Clock()
    breaker = Breaker(1, cooldown_s=5, clock=clock)
    breaker.failure()
    clock.now += 4.9
    assert not breaker.available()
    clock.now += 0.2
    assert breaker.available()
    breaker.acquire()
    assert state(breaker) is BreakerState.HALF_OPEN and not breaker.available()  # one probe at a time
    breaker.release()  # the probe's client left: no verdict, another may probe
    assert breaker.available()
    breaker.acquire()
    breaker.success()
    assert state(breaker) is BreakerState.CLOSED and breaker.available()


def test_a_failed_probe_opens_again_for_a_full_cooldown() -> None:
    clock = Clock()
    breaker = Breaker(3, cooldown_s=5, clock=clock)
    for _ in range(3):
        breaker.failure()
    clock.now += 5
    breaker.acquire()
    breaker.failure()
    assert state(breaker) is BreakerState.OPEN and not breaker.available()
    clock.now += 5
    assert breaker.available()
