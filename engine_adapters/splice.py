"""The router's socket-to-socket fast path ("the splice"), all of it in one place.

A streamed answer relayed from an instance is a run of SSE events. The plain way moves each piece the
instance's socket gives through a task: the socket callback wakes the task waiting in `read`, which yields
the piece up the relay's generators and hands it to ASGI `send`, which wakes uvicorn's writer. The router's
CPU per request is mostly that. The splice writes the pieces between an answer's first event and its last
from the instance's socket callback straight into the client's socket, so no task wakes per piece.

The whole path, in order:
1. Server side, once a request's head is parsed: gateway.uvicorn_coupling's protocol (uvicorn's httptools
   protocol, subclassed) puts a ClientSocket (engine_adapters.client_socket) for the request into the ASGI
   scope's extensions, and tells it when the connection is lost or when it refused the rest of the request.
   That part serves every request (the disconnect notice of gateway.services.disconnect), spliced or not.
2. gateway.relay.door takes it with `client_socket(scope)` for a streamed chat or completion, when
   settings.router.splice is on, and gateway.relay.call wraps it in a CountingSink (each write counts
   for the metrics) and passes that as the relay's Sink down through the route (gateway.routing.adapter)
   to the instance's adapter.
3. engine_adapters.openai_http.OpenAIHttpAdapter.stream_raw yields the first events the plain way, so the
   response's head and first event go through `send` and uvicorn's record of the response stays right.
   From then on, each time it waits for the next read, it sets the upstream connection's `on_data` hook
   (engine_adapters.h1.Connection) to Splice.take, and unsets it when the read returns.
4. h1.Connection.data_received offers each piece of body to the hook. Splice.take refuses (returns False)
   the pieces that may end the answer ([DONE], the usage event, an error) and any piece that comes while
   the client's socket is not ready: the connection then keeps the piece for `read` and drops the hook, so
   the refused piece and all after it go the plain way, in order.
5. A piece taken is cut at event boundaries and renamed to the public model (the adapter's event cutter,
   the same one `read`'s pieces go through), and ClientSocket.write puts it on the client's transport as
   one HTTP/1.1 chunk.

ClientSocket.ready is the guard: a piece is written only while uvicorn itself would write at once (chunked
framing, the response started and not complete, the client connected, its transport neither paused nor
closing). Then nothing is written out of order, and uvicorn's own bookkeeping of the response holds.

What it reads of uvicorn: through ClientSocket, the attributes of RequestResponseCycle named in
client_socket.CYCLE_ATTRIBUTES (a test asserts that uvicorn still has them; pyproject.toml bounds uvicorn to the
versions tested).

Turned off by settings.router.splice = false (env TOKENYARD_ROUTER__SPLICE=false): no Sink is given, and
every byte goes through ASGI `send`. The router tests run in both modes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from engine_adapters.h1 import Connection


class Sink(Protocol):
    """Where a relay may put its answer's later events itself, as the socket gives them, rather than yield
    each one to a waiting task. The first events and the last (usage, [DONE], an error) are always yielded;
    the relay asks `ready` before each piece it would put here, and yields the pieces it may not."""

    def ready(self) -> bool: ...

    def write(self, events: bytes) -> None: ...


class CountingSink:
    """A Sink that shows each write to `count` first (the relay's metrics and trace see the events that pass)."""

    __slots__ = ("count", "sink")

    def __init__(self, sink: Sink, count: Callable[[bytes], None]) -> None:
        self.sink, self.count = sink, count

    def ready(self) -> bool:
        return self.sink.ready()

    def write(self, events: bytes) -> None:
        self.count(events)
        self.sink.write(events)


class EventCutter(Protocol):
    """The stream's event cutter (engine_adapters.openai_http): complete events out, the error it found."""

    @property
    def error(self) -> Exception | None: ...

    def feed(self, data: bytes) -> bytes: ...


class Splice:
    """Step 4 and 5 above for one stream: Connection.on_data is set to `take` while the relay waits."""

    __slots__ = ("conn", "events", "sink", "touch")

    def __init__(self, conn: Connection, events: EventCutter, touch: Callable[[], None], sink: Sink) -> None:
        self.conn, self.events, self.touch, self.sink = conn, events, touch, sink

    def take(self, data: bytes) -> bool:
        # The marks of the pieces that may end the answer, as literals every spelling holds (a key in JSON has
        # its quotes bare; inside a string value they would be escaped): a superset, so never one too few.
        if b"[DONE]" in data or b'"usage"' in data or b'"error"' in data or not self.sink.ready():
            return False
        self.touch()  # the stream moved: its idle timer starts again
        try:
            complete = self.events.feed(data)
        except Exception as exc:  # an event past its bound: the pending read fails with it, as with an error event
            self.conn.fail(exc)
            return True
        if complete:
            self.sink.write(complete)
        if self.events.error is not None:  # its mark was cut between two pieces: what came first is passed on
            self.conn.fail(self.events.error)
        return True
