"""Serving and shutting down: uvicorn with a drain on SIGTERM, and bounds on slow clients.

The shutdown is a checklist, bounded by one deadline (settings.drain_deadline_s):
1. SIGTERM: /ready turns 503 and new requests get 503 at once; the socket stays open, so a load
   balancer that has not yet noticed still gets an answer instead of a refused connection.
2. Requests and streams in flight run on until they finish or the deadline comes.
3. At the deadline, what is left is cut off: a stream gets a last SSE error event, its engine
   request is aborted.
4. uvicorn closes the connections (nothing is running by then) and the lifespan closes the
   engines with what is left of the deadline, so the two never wait twice. The process exits 0.
A second signal skips to step 3 at once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from gateway.observability.logging import FIELDS_ATTR

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

    from gateway.settings import Settings
    from gateway.state import AppState

log = logging.getLogger(__name__)

_POLL_S = 0.05
# After the cut-off: time for cut requests to write their last event, and for uvicorn to close sockets.
_AFTER_CUT_S = 1.0


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
        while self._running and self.deadline is not None and self.clock() < self.deadline + grace_s:
            await asyncio.sleep(_POLL_S)
        return not self._running


def begin_drain(state: AppState, deadline_s: float) -> None:
    state.draining = True
    state.drain.begin(deadline_s)


async def drain(state: AppState, deadline_s: float) -> None:
    """Steps 1 to 3 of the checklist; returns when nothing is left running."""
    begin_drain(state, deadline_s)
    tracker = state.drain
    _log("draining", in_flight=tracker.in_flight, deadline_s=deadline_s)
    if not await tracker.wait_idle():
        _log("drain deadline reached; cutting off", in_flight=tracker.in_flight, level=logging.WARNING)
        tracker.cut_off()
        await tracker.wait_idle(grace_s=_AFTER_CUT_S)
    _log("drained", in_flight=tracker.in_flight)


def _log(message: str, level: int = logging.INFO, **fields: Any) -> None:
    log.log(level, message, extra={FIELDS_ATTR: fields})


BODY_WRITER = "tokenyard.body_writer"  # the scope's extension holding the request's BodyWriter


class BodyWriter:
    """Body chunks written straight to the client's socket, past the ASGI `send` (a base.Sink; the router's
    relay uses it for the events between an answer's first and last). Only between the answer's start and
    its end, both of which still go through `send`, and only while uvicorn would write at once itself:
    chunked framing, the client still there, its socket not backed up. Then uvicorn's own record of the
    answer stays right, and a sink that is not ready leaves the bytes to `send`, which waits for the client."""

    __slots__ = ("cycle", "loop", "lost", "refused")

    def __init__(self, cycle: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.cycle = cycle  # uvicorn's RequestResponseCycle for this request
        self.loop = loop
        self.lost: Callable[[], None] | None = None  # called when the connection ends before the answer
        self.refused = False  # uvicorn answered 400 itself: the rest of the request could not be parsed

    def ready(self) -> bool:
        cycle = self.cycle
        return (cycle.chunked_encoding is True and cycle.response_started and not cycle.response_complete
                and not cycle.disconnected and not cycle.flow.write_paused and not cycle.transport.is_closing())

    def write(self, data: bytes) -> None:
        if data:  # an empty chunk would end the body
            self.cycle.transport.write(b"%x\r\n%s\r\n" % (len(data), data))


def body_writer(scope: Any) -> BodyWriter | None:
    """The request's BodyWriter: there when uvicorn runs the app through header_timeout_protocol."""
    writer: BodyWriter | None = scope.get("extensions", {}).get(BODY_WRITER)
    return writer


def header_timeout_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, plus a deadline for a request's headers, and each request's BodyWriter,
    which it tells when the connection ends.

    uvicorn times out idle keep-alive connections only after a response; a connection that never
    sends a request, or sends its headers a byte at a time, would otherwise be held for ever.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None
        _writer: BodyWriter | None = None  # the latest request's, which is the one uvicorn tells of a disconnect

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:
                self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()
            if self.cycle is not None and self.cycle.scope is self.scope:  # not an upgrade
                extensions: dict[str, Any] = self.scope.setdefault("extensions", {})  # type: ignore[assignment]
                self._writer = extensions[BODY_WRITER] = BodyWriter(self.cycle, self.loop)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)
            writer = self._writer
            if writer is not None and writer.lost is not None and not writer.cycle.response_complete:
                writer.lost()

        def send_400_response(self, msg: str) -> None:
            # A bad body (say, a malformed chunk) while the app runs: the app only hears a disconnect,
            # so its writer records that the server refused the request, for the access log.
            writer = self._writer
            if writer is not None and writer.cycle is self.cycle and not writer.cycle.response_started:
                writer.refused = True
            super().send_400_response(msg)

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    limits, tls = settings.limits, settings.tls
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": None,  # our JSON handler on the root logger formats uvicorn's records too
        "access_log": False,  # the gateway writes its own access log, with request ids
        "http": header_timeout_protocol(limits.header_timeout_s),
        "timeout_keep_alive": limits.keep_alive_timeout_s,
        # The drain has already waited for the requests; this only covers sockets still closing.
        "timeout_graceful_shutdown": int(_AFTER_CUT_S),
    }
    if tls.ssl_keyfile and tls.ssl_certfile:
        options.update(ssl_keyfile=str(tls.ssl_keyfile), ssl_certfile=str(tls.ssl_certfile))
    return options


def _server_class() -> Callable[[uvicorn.Config, AppState, float], uvicorn.Server]:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def __init__(self, config: uvicorn.Config, state: AppState, deadline_s: float) -> None:
            super().__init__(config)
            self.state, self.deadline_s = state, deadline_s
            self._loop: asyncio.AbstractEventLoop | None = None
            self._draining: asyncio.Task[None] | None = None

        async def startup(self, sockets: Any = None) -> None:
            self._loop = asyncio.get_running_loop()
            await super().startup(sockets)
            # What start-up built (modules, models, the app) lives as long as the process: kept out of the
            # collector's sweeps, which then only walk what requests allocate.
            gc.collect()
            gc.freeze()

        def handle_exit(self, sig: int, frame: Any) -> None:
            # Not recorded in _captured_signals on purpose: uvicorn re-raises those after shutdown,
            # which would make the exit status the signal's instead of 0.
            if self._loop is None or not self.started:
                self.should_exit = True  # still starting: nothing to drain
            elif self._draining is None:
                self._loop.call_soon_threadsafe(self._begin)
            else:
                self._loop.call_soon_threadsafe(self._hurry)

        def _begin(self) -> None:
            self._draining = asyncio.ensure_future(self._drain_then_exit())

        def _hurry(self) -> None:
            self.state.drain.deadline = self.state.drain.clock()

        async def _drain_then_exit(self) -> None:
            try:
                await drain(self.state, self.deadline_s)
            finally:
                self.should_exit = True

    return DrainingServer


def serve(app: FastAPI, settings: Settings) -> None:
    """Run `app` until SIGTERM or SIGINT, then drain (see the module docstring)."""
    import uvicorn

    state: AppState = app.state.tokenyard
    # The settings as the process sees them; SecretStr fields print as stars.
    _log("settings", settings=settings.model_dump(mode="json"))
    config = uvicorn.Config(app, **uvicorn_options(settings))
    _server_class()(config, state, settings.drain_deadline_s).run()
