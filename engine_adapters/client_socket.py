"""One request's connection, as the server holds it: put into the ASGI scope by gateway.uvicorn_coupling's
protocol for every request, it tells the app of the connection's end (gateway.services.disconnect) and of a
request the server refused (the access log), and the router's splice (engine_adapters.splice) writes a
streamed answer's events to it directly."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

CLIENT_SOCKET = "tokenyard.client_socket"  # the ASGI scope's extension holding the request's ClientSocket
# What ClientSocket reads of uvicorn's RequestResponseCycle; tests/unit/test_splice.py checks they exist.
CYCLE_ATTRIBUTES = ("chunked_encoding", "response_started", "response_complete", "disconnected", "flow", "transport")


class ClientSocket:
    """One request's connection as uvicorn holds it: body chunks can be written to it past ASGI `send` (a
    Sink), and it hears of the connection's end (`lost`) and of a request the server refused (`refused`)."""

    __slots__ = ("cycle", "loop", "lost", "refused")

    def __init__(self, cycle: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.cycle = cycle  # uvicorn's RequestResponseCycle for this request
        self.loop = loop
        self.lost: Callable[[], None] | None = None  # called when the connection ends before the answer
        self.refused = False  # uvicorn answered 400 itself: the rest of the request could not be parsed

    def ready(self) -> bool:
        cycle = self.cycle
        return (
            cycle.chunked_encoding is True
            and cycle.response_started
            and not cycle.response_complete
            and not cycle.disconnected
            and not cycle.flow.write_paused
            and not cycle.transport.is_closing()
        )

    def write(self, events: bytes) -> None:
        if events:  # an empty chunk would end the body
            self.cycle.transport.write(b"%x\r\n%s\r\n" % (len(events), events))


def client_socket(scope: Any) -> ClientSocket | None:
    """The request's ClientSocket: there when uvicorn runs the app through gateway.uvicorn_coupling's protocol."""
    found: ClientSocket | None = scope.get("extensions", {}).get(CLIENT_SOCKET)
    return found
