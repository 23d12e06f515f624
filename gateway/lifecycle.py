"""Draining: the requests in flight, the deadline they get on SIGTERM, and the exit when an engine dies.

The shutdown is a checklist, bounded by one deadline (settings.drain_deadline_s):
1. SIGTERM: /ready turns 503 and new requests get 503 at once; the socket stays open, so a load
   balancer that has not yet noticed still gets an answer instead of a refused connection.
2. Requests and streams in flight run on until they finish or the deadline comes.
3. At the deadline, what is left is cut off: a stream gets a last SSE error event, its engine
   request is aborted.
4. uvicorn closes the connections (nothing is running by then) and the lifespan closes the
   engines with what is left of the deadline, so the two never wait twice. The process exits 0.
A second signal skips to step 3 at once. gateway.server runs the checklist from uvicorn's signal handling.

When an in-process engine dies (OOM kill, CUDA error), only a restart mends it, so the server, as
`vllm serve` does, exits: it logs why, refuses new requests, waits settings.engine_dead_exit_s (the dead
engine's streams have ended already; other engines' requests may finish; /health answers 503, so a
liveness probe would restart the process too), cuts off what is left, and exits with ENGINE_DEAD_EXIT_CODE.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from engine_adapters.polling import poll_until
from gateway.observability.logging import FIELDS_ATTR

log = logging.getLogger(__name__)

_DEATH_POLL_S = 0.5  # how often the server looks for a dead engine (attribute reads, no I/O)
ENGINE_DEAD_EXIT_CODE = 1
# After the cut-off: time for cut requests to write their last event, and for uvicorn to close sockets.
AFTER_CUT_S = 1.0


class CutOff(Protocol):
    def cut_off(self) -> None: ...


class Drain:
    """The in-flight requests, and the deadline they have once draining begins."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.deadline: float | None = None
        self._running: set[CutOff] = set()

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def add(self, request: CutOff) -> None:
        self._running.add(request)

    def discard(self, request: CutOff) -> None:
        self._running.discard(request)

    def begin(self, deadline_s: float) -> None:
        if self.deadline is None:
            self.deadline = self.clock() + deadline_s

    def time_left(self, default: float) -> float:
        """What remains of the drain deadline; `default` when no drain has begun."""
        return default if self.deadline is None else max(0.0, self.deadline - self.clock())

    def cut_off(self) -> None:
        for request in list(self._running):
            request.cut_off()

    async def wait_idle(self, grace_s: float = 0.0) -> bool:
        """Wait until nothing runs or the deadline (read afresh: a second signal moves it) plus `grace_s` passes."""
        if self.deadline is None:
            return not self._running
        return await poll_until(lambda: not self._running, lambda: (self.deadline or 0.0) + grace_s, self.clock)


class Served(Protocol):
    """What the checklist reads and sets of the app's state (gateway.state.AppState)."""

    draining: bool
    drain: Drain

    def engine_deaths(self) -> dict[str, str]: ...


def begin_drain(state: Served, deadline_s: float) -> None:
    state.draining = True
    state.drain.begin(deadline_s)


async def drain(state: Served, deadline_s: float) -> None:
    """Steps 1 to 3 of the checklist; returns when nothing is left running."""
    begin_drain(state, deadline_s)
    tracker = state.drain
    log_event("draining", in_flight=tracker.in_flight, deadline_s=deadline_s)
    if not await tracker.wait_idle():
        log_event("drain deadline reached; cutting off", in_flight=tracker.in_flight, level=logging.WARNING)
        tracker.cut_off()
        await tracker.wait_idle(grace_s=AFTER_CUT_S)
    log_event("drained", in_flight=tracker.in_flight)


async def engine_death(state: Served, poll_s: float = _DEATH_POLL_S) -> dict[str, str]:
    """Wait until an in-process engine has died; return the dead ones (model name -> cause)."""
    await poll_until(lambda: bool(state.engine_deaths()), lambda: float("inf"), interval_s=poll_s)
    return state.engine_deaths()


def log_event(message: str, level: int = logging.INFO, **fields: Any) -> None:
    log.log(level, message, extra={FIELDS_ATTR: fields})
