"""A small pooled HTTP/1.1 client for the router's hot path: generation relayed to an instance.

One request per connection at a time; the response is parsed by httptools (the C parser uvicorn uses) in
the protocol callback, and its body is handed over as the socket gives it, with nothing in between: no
stream reader, no per-read timer, no client-side request objects. bench/router_overhead.py measured it
against aiohttp, the client it replaced here (README, Performance). Time limits are the caller's: `post`
tells it each connection the request goes out on, and it can fail a pending read with `Connection.fail`.
A reader may also take the body in the socket's callback (`Connection.on_data`), so that bytes it can pass
straight on never wake the task waiting in `read`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import httptools

_HIGH_WATER = 1 << 20  # unread body bytes at which the socket stops being read until the reader catches up


class UpstreamClosed(ConnectionError):
    """The connection ended, or the upstream spoke something other than HTTP/1.1."""


class ConnectFailed(ConnectionError):
    """No connection could be made (refused, unreachable, or not within the connect timeout)."""


class Connection(asyncio.Protocol):
    """One connection and the response being read on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.writable: asyncio.Future[None] | None = None  # while the socket's write buffer is full
        self.reset()

    def reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.content_type = b""
        self.headers_done = self.complete = self.keep_alive = self.framed = self.paused = False
        self.received = 0  # bytes of this response so far
        self.body: list[bytes] = []
        self.buffered = 0
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        # While set, given the body that each read from the socket brought: True when it took it, and then
        # no reader is woken for it; False leaves it in the buffer for `read` and unsets the hook, so that
        # what follows queues behind it in order.
        self.on_data: Callable[[bytes], bool] | None = None
        self.news = False  # something besides body for a waiting reader: the headers, the end

    # -- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a connection's transport is always an asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(UpstreamClosed(f"The upstream's answer is not HTTP/1.1: {exc}"))
            self.close()
        if self.body and self.on_data is not None:
            self._offer()
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        if self.news or self.body:
            self.news = False
            self._wake()

    def _offer(self) -> None:
        assert self.on_data is not None
        data = self._take_body()
        if self.on_data(data):
            self.buffered = 0
        else:
            self.on_data = None
            self.body.append(data)

    def pause_writing(self) -> None:
        self.writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None

    async def drain(self) -> None:
        """Wait while the socket's write buffer is full (a streamed request body; see Pool.stream)."""
        if self.writable is not None:
            await self.writable

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.resume_writing()
        if self.headers_done and not self.framed:
            self.complete = True  # a body that runs to the end of the connection
        elif not self.complete:
            self.fail(UpstreamClosed("The upstream closed the connection."))
        self._wake()

    # -- httptools callbacks ----------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower in (b"content-length", b"transfer-encoding"):
            self.framed = True
        elif lower == b"content-type":
            self.content_type = value

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = self.news = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        self.complete = self.news = True

    # -- reading ------------------------------------------------------------------------

    async def head(self) -> int:
        """The response's status, once its headers are in."""
        while not self.headers_done:
            if self.error is not None:
                raise self.error
            await self._wait()
        return self.status

    async def read(self) -> bytes:
        """The body bytes that have come since the last read; b"" at its end."""
        while not self.body:
            if self.complete:
                return b""
            if self.error is not None:
                raise self.error
            await self._wait()
        data = self._take_body()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def _take_body(self) -> bytes:
        """The body bytes buffered so far, as one piece; the buffer is left empty."""
        data = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.body.clear()
        return data

    async def read_all(self) -> bytes:
        parts = []
        while data := await self.read():
            parts.append(data)
        return b"".join(parts)

    def fail(self, exc: BaseException) -> None:
        """End the pending and later reads with `exc` (a timeout, a broken stream)."""
        if self.error is None:
            self.error = exc
        self.resume_writing()
        self._wake()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    async def _wait(self) -> None:
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


def header_lines(headers: dict[str, str]) -> bytes:
    """`headers` as HTTP/1.1 header lines for Pool.post; the caller has checked that the values are plain."""
    return "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode("latin-1")


class Pool:
    """Keep-alive connections to one server, for POSTs of JSON bodies."""

    def __init__(self, base_url: str, headers: dict[str, str], *, connect_s: float = 2.0, max_idle: int = 128) -> None:
        url = urlsplit(base_url)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if url.scheme == "https" else None
        self.prefix = url.path.rstrip("/")
        fixed = {"host": url.netloc, **headers}
        self.fixed_bare = "".join(f"{name}: {value}\r\n" for name, value in fixed.items()).encode("latin-1")
        self.fixed = b"content-type: application/json\r\n" + self.fixed_bare
        self.connect_s, self.max_idle = connect_s, max_idle
        self.idle: list[Connection] = []

    async def post(
        self, path: str, body: bytes, sent: Callable[[Connection], None] = lambda conn: None, headers: bytes = b""
    ) -> Connection:
        """Send the request; the connection, once the response's headers are in. `sent` is told each
        connection the request goes out on (to arm the caller's timer on it). A kept-alive connection that
        the server had closed meanwhile is replaced by a new one (nothing was read from it). `headers`: this
        request's own header lines besides the fixed ones, each ending in CRLF (header_lines)."""
        request = b"POST %s HTTP/1.1\r\n%s%scontent-length: %d\r\n\r\n%s" % (
            (self.prefix + path).encode("latin-1"),
            self.fixed,
            headers,
            len(body),
            body,
        )
        while True:
            conn = self._take()
            fresh = conn is None
            if conn is None:
                conn = await self._connect()
            assert conn.transport is not None
            conn.transport.write(request)
            sent(conn)
            try:
                await conn.head()
                return conn
            except UpstreamClosed:
                conn.close()
                if fresh or conn.received:
                    raise
            except BaseException:  # a timeout or a cancel while waiting: the connection is not reusable
                conn.close()
                raise

    async def stream(
        self,
        path: str,
        content_type: bytes,
        head: bytes,
        rest: AsyncIterator[bytes] | None,
        length: int | None,
        sent: Callable[[Connection], None] = lambda conn: None,
        headers: bytes = b"",
    ) -> Connection:
        """Send a request whose body is `head` and then `rest` as it comes (framed by `length` when known,
        else chunked), on a new connection: a kept one may have been closed by the server, and a body
        streamed in from a client cannot be sent again. The connection, once the response's headers are in;
        if the server answers before the body is all sent, the rest is not sent. `headers` as for post."""
        framing = b"content-length: %d" % length if length is not None else b"transfer-encoding: chunked"
        conn = await self._connect()
        assert conn.transport is not None
        try:
            conn.transport.write(
                b"POST %s HTTP/1.1\r\ncontent-type: %s\r\n%s%s%s\r\n\r\n"
                % ((self.prefix + path).encode("latin-1"), content_type, self.fixed_bare, headers, framing)
            )
            sent(conn)
            chunked = length is None
            pieces = _pieces(head, rest)
            async for piece in pieces:
                if conn.closed or conn.headers_done:
                    break  # answered already (an early error), or gone: head() says which
                if piece:
                    conn.transport.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                    await conn.drain()
            else:
                if chunked and not conn.closed:
                    conn.transport.write(b"0\r\n\r\n")
            await conn.head()
        except BaseException:
            conn.close()
            raise
        return conn

    def release(self, conn: Connection) -> None:
        """A response read to its end: its connection is kept for the next request; otherwise it is closed."""
        if len(self.idle) >= self.max_idle:  # full: drop the ones the server has closed meanwhile
            self.idle = [kept for kept in self.idle if not kept.closed]
        if conn.complete and conn.keep_alive and not conn.closed and len(self.idle) < self.max_idle:
            self.idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()

    def _take(self) -> Connection | None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                conn.reset()
                return conn
        return None

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_s):
                _, conn = await loop.create_connection(
                    lambda: Connection(loop),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                )
        except (OSError, TimeoutError) as exc:
            raise ConnectFailed(f"Cannot connect to {self.host}:{self.port}.") from exc
        return conn


async def _pieces(head: bytes, rest: AsyncIterator[bytes] | None) -> AsyncIterator[bytes]:
    yield head
    if rest is not None:
        async for piece in rest:
            yield piece
