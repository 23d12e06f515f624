"""Admission control per model: a cap on requests in flight and a bounded, prioritised wait queue.

At most `max_in_flight` requests run per model; up to `max_queue` more wait, the most urgent first,
each for at most `queue_timeout_s`. Past that the answer is 429 (503 when the engine is down),
never an unbounded queue. When the queue is full, a more urgent arrival takes the place of the
least urgent waiter, which is refused: low priority is shed first.

Within a priority, waiting requests are served across keys in proportion to their keys' fair-share weights
(gateway.scopes; start-time fair queuing, gateway.fair_share): one key's flood waits behind its own requests, not in
front of another key's. A full queue sheds the least urgent, then the one furthest back in its key's share.

Priority follows vLLM's convention (lower runs sooner, default 0) and comes from the `x-priority`
header, else the body's `priority`. It is handed on to the engine with the request (RequestInfo.forwarded).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import EngineUnavailable, GatewayError, InvalidRequest, PermissionDenied, RateLimited
from gateway.fair_share import Claim, FairShare, claim_as
from gateway.held import waiting
from gateway.middleware.context import RequestInfo, header, is_service_path, request_info, send_error
from gateway.state import AppState

_INT64 = 2**63  # vLLM's own bounds for priority


class Refused(Exception):
    """No slot: the queue was full, the wait timed out, or a more urgent request took the place."""


@dataclass(order=True)
class _Waiter:
    priority: int
    start: float  # its fair-share start tag (FairShare): within a priority, the smallest is served first
    seq: int
    key: str = field(compare=False)
    since: float = field(compare=False)  # when it began to wait (monotonic)
    future: asyncio.Future[None] = field(compare=False)


class Admission:
    def __init__(
        self,
        max_in_flight: int,
        max_queue: int,
        timeout_s: float,
        on_depth: Callable[[int], None] = lambda depth: None,
        on_key: Callable[[str, str], None] = lambda event, key: None,
    ) -> None:
        self.max_in_flight, self.max_queue, self.timeout_s = max_in_flight, max_queue, timeout_s
        self.on_depth = on_depth
        self.on_key = on_key  # (event, key): "waiting", "left" (the queue), "served", "shed"
        self.running = 0
        self.waiting: list[_Waiter] = []  # a few hundred at most: plain min/max scans are enough
        self._seq = itertools.count()
        self._share = FairShare()

    async def acquire(self, priority: int = 0, key: str = "", weight: int = 1) -> None:
        self._prune()
        if self.running < self.max_in_flight and not self.waiting:
            self.running += 1
            self._share.served(self._share.take(key, weight))
            self.on_key("served", key)
            return
        try:
            waiter = self._enqueue(priority, key, weight)
        except Refused:
            self.on_key("shed", key)
            raise
        outcome: str | None = "shed"
        try:
            async with asyncio.timeout(self.timeout_s):
                await waiter.future  # a result: release() handed us its slot
            outcome = "served"
        except TimeoutError:
            raise Refused(f"no slot within {self.timeout_s:g}s") from None
        except asyncio.CancelledError:
            outcome = None  # the client left: neither served nor shed
            raise
        finally:
            if outcome != "served":
                self._withdraw(waiter)
            self.on_key("left", key)
            if outcome is not None:
                self.on_key(outcome, key)

    @property
    def depth(self) -> int:
        """Requests waiting now (a waiter whose client left may stay in the list until the next prune)."""
        return sum(not waiter.future.done() for waiter in self.waiting)

    def longest_waiting(self, now: float | None = None) -> tuple[str, float] | None:
        """The key whose request has waited longest, and for how many seconds; None when nothing waits."""
        waiters = [waiter for waiter in self.waiting if not waiter.future.done()]
        if not waiters:
            return None
        first = min(waiters, key=lambda waiter: waiter.since)
        return first.key, (time.monotonic() if now is None else now) - first.since

    def release(self) -> None:
        self._prune()
        if self.waiting:
            best = min(self.waiting)
            self.waiting.remove(best)
            self._share.served(best.start)
            best.future.set_result(None)  # the slot passes on; `running` stays as it is
        else:
            self.running -= 1
        self.on_depth(len(self.waiting))

    def _enqueue(self, priority: int, key: str, weight: int) -> _Waiter:
        start = self._share.start(key)
        if len(self.waiting) >= self.max_queue:
            worst = max(self.waiting, default=None)
            if worst is None or (worst.priority, worst.start) <= (priority, start):  # ties: those waiting stay
                raise Refused("the wait queue is full")
            self.waiting.remove(worst)
            reason = (
                "a more urgent request" if worst.priority > priority else "a request of a key with less of the queue"
            )
            worst.future.set_exception(Refused(f"{reason} took its place in the queue"))
        loop = asyncio.get_running_loop()
        waiter = _Waiter(
            priority, self._share.take(key, weight), next(self._seq), key, time.monotonic(), loop.create_future()
        )
        self.waiting.append(waiter)
        self.on_depth(len(self.waiting))
        self.on_key("waiting", key)
        return waiter

    def _withdraw(self, waiter: _Waiter) -> None:
        """A waiter gives up (timeout, shed, client gone); a slot handed to it in that instant goes back."""
        if waiter in self.waiting:
            self.waiting.remove(waiter)
            self.on_depth(len(self.waiting))
        elif waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
            self.release()

    def _prune(self) -> None:
        # Futures cancelled with their task (the client left) until that task runs its own cleanup.
        self.waiting = [w for w in self.waiting if not w.future.done()]


async def _wait_for(admission: Admission, priority: int, key: str, weight: int) -> None:
    """A slot; a request that must wait for one holds its body's bytes against limits.max_held_bytes meanwhile."""
    if admission.running < admission.max_in_flight and not admission.waiting:
        await admission.acquire(priority, key, weight)  # a slot now: nothing waits
        return
    with waiting():
        await admission.acquire(priority, key, weight)


def priority_of(scope: Scope, body: Any) -> int:
    raw = header(scope, b"x-priority")
    if raw is not None:
        try:
            value: Any = int(raw)
        except ValueError:
            raise InvalidRequest("x-priority must be an integer.", param="x-priority") from None
        param = "x-priority"
    else:
        value = body.get("priority", 0) if isinstance(body, dict) else 0
        param = "priority"
    if isinstance(value, bool) or not isinstance(value, int) or not -_INT64 <= value < _INT64:
        raise InvalidRequest(f"{param} must be a 64-bit integer.", param=param)
    return value


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state
        self.queues = state.queues

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_service_path(scope) or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        info = request_info(scope)
        try:
            priority = priority_of(scope, info.body)
        except InvalidRequest as exc:
            await send_error(send, exc)
            return
        if info.key_scope is not None and not info.key_scope.allows_priority(priority):
            self.state.metrics.rejected.labels("scope").inc()
            ceiling = info.key_scope.max_priority
            await send_error(send, PermissionDenied(f"This API key may not ask for a priority below {ceiling}."))
            return
        key_scope = info.key_scope
        claim = Claim(priority, info.key_name or "", key_scope.weight if key_scope is not None else 1)
        admission = self._admission(info.model)
        if admission is not None:
            try:
                await self._acquire(admission, claim, info)
            except Refused as exc:
                self.state.metrics.rejected.labels("admission").inc()
                await send_error(send, await self._refusal(info.model or "", exc))
                return
            except GatewayError as exc:  # past limits.max_held_bytes
                self.state.metrics.rejected.labels("admission").inc()
                await send_error(send, exc)
                return
        if priority:
            info.forwarded = dataclasses.replace(info.forwarded, priority=priority)
        claim_as(claim)  # a route holding it for an instance orders it the same way (gateway.routing.holding)
        try:
            await self.app(scope, receive, send)
        finally:
            if admission is not None:
                admission.release()

    @staticmethod
    async def _acquire(admission: Admission, claim: Claim, info: RequestInfo) -> None:
        trace = info.forwarded.trace
        if trace is None:
            await _wait_for(admission, claim.priority, claim.key, claim.weight)
            return
        with trace.span(
            "tokenyard.admission", {"tokenyard.priority": claim.priority, "tokenyard.queue_depth": admission.depth}
        ):
            await _wait_for(admission, claim.priority, claim.key, claim.weight)

    def _admission(self, model: str | None) -> Admission | None:
        """Only models this server serves get a queue, one per route or engine (every alias and adapter of it
        shares it: AppState.queue_name); for any other name the app answers 404."""
        if model is None or model not in self.state.adapters:
            return None
        name = self.state.queue_name(model)
        if name not in self.queues:
            limits = self.state.settings.limits
            gauge = self.state.metrics.queue_depth.labels(name)
            self.queues[name] = Admission(
                limits.max_in_flight, limits.max_queue, limits.queue_timeout_s, gauge.set, self._key_counter(name)
            )
        return cast(Admission, self.queues[name])  # the state holds them as WaitQueue, to import nothing of ours

    def _key_counter(self, model: str) -> Callable[[str, str], None]:
        """A queue's per-key events as metrics: keys waiting, served, shed (by key name, never the key)."""
        metrics = self.state.metrics

        def count(event: str, key: str) -> None:
            if event == "waiting":
                metrics.key_waiting.labels(model, key).inc()
            elif event == "left":
                metrics.key_waiting.labels(model, key).dec()
            elif event == "served":
                metrics.key_served.labels(model, key).inc()
            else:
                metrics.key_shed.labels(model, key).inc()

        return count

    async def _refusal(self, model: str, reason: Refused) -> GatewayError:
        try:
            if not self.state.ready or self.state.draining:
                raise EngineUnavailable()
            await self.state.adapters[model].check_health()
        except Exception:
            return EngineUnavailable("The engine for this model is not available.")
        return RateLimited(f"The server is overloaded ({reason}). Retry later.", code="server_overloaded")
