"""The server: uvicorn, with bounds on slow and oversized request heads, each request's ClientSocket, the
drain on SIGTERM and the exit when an in-process engine dies (the checklists are in gateway.lifecycle)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import orjson

from engine_adapters.splice import CLIENT_SOCKET, ClientSocket
from gateway.errors import GatewayError, HeaderTooLarge, InvalidRequest, error_payload
from gateway.lifecycle import AFTER_CUT_S, ENGINE_DEAD_EXIT_CODE, begin_drain, drain, engine_death, log_event

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

    from gateway.settings import LimitSettings, Settings
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


def bounded_protocol(limits: LimitSettings) -> type[asyncio.Protocol]:
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
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    header_timeout_s, max_head = limits.header_timeout_s, limits.max_header_bytes
    head_too_large = f"The request line and headers are larger than {max_head} bytes."

    class BoundedProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None
        _socket: ClientSocket | None = None  # the latest request's, which is the one uvicorn tells of a disconnect
        # Bytes received since the last head ended (or the connection began); None while a body is read.
        _head_bytes: int | None = 0
        _head_over = False  # set just before the parser is stopped for a head past the bound
        _refused = False  # answered 431 or 400: what arrives now is dropped until the connection closes

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # uvicorn's protocol is called with an asyncio.Transport
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._head_bytes is not None:
                self._head_bytes += len(data)
            super().data_received(data)
            if self._head_bytes is not None and self._head_bytes > max_head and not self.transport.is_closing():
                self._refuse(HeaderTooLarge(head_too_large))  # still no end of the head in sight

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:
                self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            # A head that came whole in one read was not caught by the count in data_received.
            if len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers) > max_head:
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
            if (
                client_socket is not None
                and client_socket.cycle is self.cycle
                and not client_socket.cycle.response_started
            ):
                client_socket.refused = True
            self._refuse(HeaderTooLarge(head_too_large) if self._head_over else InvalidRequest(msg))

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)
            client_socket = self._socket
            if (
                client_socket is not None
                and client_socket.lost is not None
                and not client_socket.cycle.response_complete
            ):
                client_socket.lost()

        def _refuse(self, exc: GatewayError) -> None:
            self._refused = True
            self._disarm()
            self.transport.write(closing_answer(exc))
            # Closing at once, with the client's bytes unread, would send a reset that can discard the answer.
            self._header_timer = self.loop.call_later(_LINGER_S, self.transport.close)

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

    return BoundedProtocol


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    limits, tls = settings.limits, settings.tls
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": None,  # our JSON handler on the root logger formats uvicorn's records too
        "access_log": False,  # the gateway writes its own access log, with request ids
        "http": bounded_protocol(limits),
        "timeout_keep_alive": limits.keep_alive_timeout_s,
        # The drain has already waited for the requests; this only covers sockets still closing.
        "timeout_graceful_shutdown": int(AFTER_CUT_S),
    }
    if tls.ssl_keyfile and tls.ssl_certfile:
        options.update(ssl_keyfile=str(tls.ssl_keyfile), ssl_certfile=str(tls.ssl_certfile))
    return options


def server_class() -> Callable[[uvicorn.Config, AppState], uvicorn.Server]:
    """uvicorn's server with the drain on SIGTERM, and an exit when an in-process engine dies."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
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
            then = (
                f"exiting in {exit_after_s:g} s" if exit_after_s is not None else "staying up (engine_dead_exit_s null)"
            )
            for model, cause in (await engine_death(self.state)).items():
                log_event(f"engine for model {model} died: {cause}; {then}", logging.ERROR, model=model, cause=cause)
            if exit_after_s is None:
                return
            self.exit_code = ENGINE_DEAD_EXIT_CODE
            begin_drain(self.state, exit_after_s)  # new requests get 503 now (a running drain keeps its deadline)
            await asyncio.sleep(exit_after_s)  # probes see /health 503; other engines' requests may finish
            self._begin(0.0)  # the deadline has passed: what still runs is cut off, then the server exits

    return DrainingServer


def serve(app: FastAPI, settings: Settings) -> int:
    """Run `app` until SIGTERM or SIGINT, then drain (see the module docstring). Returns the exit code."""
    import uvicorn

    # The settings as the process sees them; SecretStr fields print as stars.
    log_event("settings", settings=settings.model_dump(mode="json"))
    server = server_class()(uvicorn.Config(app, **uvicorn_options(settings)), app.state.tokenyard)
    server.run()
    return server.exit_code  # type: ignore[attr-defined]  # set by our Server subclass when a signal or engine death ends it
