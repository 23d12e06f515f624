"""Where tokenyard reaches into uvicorn: two module-level subclasses, imported only by gateway.server when it
runs the app (and by their tests), so that nothing else imports uvicorn's internals.

- BoundedProtocol: uvicorn's httptools protocol, plus bounds on a request's head and each request's
  ClientSocket (engine_adapters.client_socket), which it tells when the connection ends. It reads httptools'
  parser callbacks (on_message_begin, on_headers_complete, on_message_complete), the protocol's url, headers,
  cycle and scope, and send_400_response; the request cycle's own attributes are checked by
  tests/unit/test_splice.py, and pyproject bounds uvicorn's version to the ones tested.
- DrainingServer: uvicorn's server with the drain on SIGTERM and the exit when an in-process engine dies
  (the checklists are in gateway.lifecycle); it overrides startup, shutdown and handle_exit.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from engine_adapters.client_socket import CLIENT_SOCKET, ClientSocket
from gateway.errors import GatewayError, HeaderTooLarge, InvalidRequest, error_payload
from gateway.lifecycle import ENGINE_DEAD_EXIT_CODE, begin_drain, drain, engine_death, log_event

if TYPE_CHECKING:
    from gateway.settings import LimitSettings
    from gateway.state import AppState

# After a 431 or a protocol 400: how long what the client still sends is read and dropped before the close.
_LINGER_S = 1.0


class StopParsing(Exception):
    """Raised in a parser callback to stop httptools at once; uvicorn then calls send_400_response."""


def closing_answer(exc: GatewayError) -> bytes:
    """A whole answer with `exc` in OpenAI's error shape, for the protocol to write before it closes."""
    status, body = error_payload(exc)
    raw = orjson.dumps(body)
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(raw)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + raw


class BoundedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus bounds on a request's head (a deadline and a size), and each request's
    ClientSocket, which it tells when the connection ends.

    uvicorn times out idle keep-alive connections only after a response; a connection that never
    sends a request, or sends its headers a byte at a time, would otherwise be held for ever. Nor does
    it (or httptools) bound a head's size: a header of many megabytes would be gathered and parsed whole.
    Here the bytes that arrive while a head is incomplete are counted, and past max_header_bytes the
    client gets 431 at once; the rest of what it sends is read and dropped for a moment (so that it can
    read the answer rather than a reset), then the connection closes. A request httptools cannot parse
    gets uvicorn's 400 the same way, in OpenAI's error shape.
    """

    _header_timer: asyncio.TimerHandle | None = None
    _socket: ClientSocket | None = None  # the latest request's, which is the one uvicorn tells of a disconnect
    # Bytes received since the last head ended (or the connection began); None while a body is read.
    _head_bytes: int | None = 0
    _head_over = False  # set just before the parser is stopped for a head past the bound
    _refused = False  # answered 431 or 400: what arrives now is dropped until the connection closes

    def __init__(self, *args: Any, limits: LimitSettings, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout_s, self._max_head = limits.header_timeout_s, limits.max_header_bytes

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # uvicorn's protocol is called with an asyncio.Transport
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._head_bytes is not None:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._head_bytes is not None and self._head_bytes > self._max_head and not self.transport.is_closing():
            self._refuse(self._head_too_large())  # still no end of the head in sight

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        # A head that came whole in one read was not caught by the count in data_received.
        if len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers) > self._max_head:
            self._head_over = True
            raise StopParsing()
        self._head_bytes = None
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.scope is self.scope:  # not an upgrade
            extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
            self._socket = extensions[CLIENT_SOCKET] = ClientSocket(self.cycle, self.loop)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_bytes = 0

    def send_400_response(self, msg: str) -> None:
        # A bad body (say, a malformed chunk) while the app runs: the app only hears a disconnect,
        # so its ClientSocket records that the server refused the request, for the access log.
        client_socket = self._socket
        if client_socket is not None and client_socket.cycle is self.cycle and not client_socket.cycle.response_started:
            client_socket.refused = True
        self._refuse(self._head_too_large() if self._head_over else InvalidRequest(msg))

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
        client_socket = self._socket
        if client_socket is not None and client_socket.lost is not None and not client_socket.cycle.response_complete:
            client_socket.lost()

    def _refuse(self, exc: GatewayError) -> None:
        self._refused = True
        self._disarm()
        self.transport.write(closing_answer(exc))
        # Closing at once, with the client's bytes unread, would send a reset that can discard the answer.
        self._header_timer = self.loop.call_later(_LINGER_S, self.transport.close)

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self._header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _head_too_large(self) -> HeaderTooLarge:
        return HeaderTooLarge(f"The request line and headers are larger than {self._max_head} bytes.")


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the drain on SIGTERM, and an exit when an in-process engine dies."""

    def __init__(self, config: uvicorn.Config, state: AppState) -> None:
        super().__init__(config)
        self.state = state
        self.deadline_s = state.settings.drain_deadline_s
        self.exit_code = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Task[None] | None = None
        self._watching: asyncio.Task[None] | None = None

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if not self.should_exit:
            self._watching = asyncio.ensure_future(self._exit_on_engine_death())
        # What start-up built (modules, models, the app) lives as long as the process: kept out of the
        # collector's sweeps, which then only walk what requests allocate.
        gc.collect()
        gc.freeze()

    async def shutdown(self, sockets: Any = None) -> None:
        if self._watching is not None:
            self._watching.cancel()
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        # Not recorded in _captured_signals on purpose: uvicorn re-raises those after shutdown,
        # which would make the exit status the signal's instead of 0.
        if self._loop is None or not self.started:
            self.should_exit = True  # still starting: nothing to drain
        elif self._draining is None:
            self._loop.call_soon_threadsafe(self._begin)
        else:
            self._loop.call_soon_threadsafe(self._hurry)

    def _begin(self, deadline_s: float | None = None) -> None:
        if self._draining is None:
            self._draining = asyncio.ensure_future(self._drain_then_exit(deadline_s))

    def _hurry(self) -> None:
        self.state.drain.deadline = self.state.drain.clock()

    async def _drain_then_exit(self, deadline_s: float | None) -> None:
        try:
            await drain(self.state, self.deadline_s if deadline_s is None else deadline_s)
        finally:
            self.should_exit = True

    async def _exit_on_engine_death(self) -> None:
        exit_after_s = self.state.settings.engine_dead_exit_s
        then = f"exiting in {exit_after_s:g} s" if exit_after_s is not None else "staying up (engine_dead_exit_s null)"
        for model, cause in (await engine_death(self.state)).items():
            log_event(f"engine for model {model} died: {cause}; {then}", logging.ERROR, model=model, cause=cause)
        if exit_after_s is None:
            return
        self.exit_code = ENGINE_DEAD_EXIT_CODE
        begin_drain(self.state, exit_after_s)  # new requests get 503 now (a running drain keeps its deadline)
        await asyncio.sleep(exit_after_s)  # probes see /health 503; other engines' requests may finish
        self._begin(0.0)  # the deadline has passed: what still runs is cut off, then the server exits
