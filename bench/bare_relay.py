"""Suite 2's two floors: what relaying costs in Python when nothing else is done.

Neither is a router. They pass the client's body to the one upstream as it came, and pass the answer back,
with no validation, routing, limits, metrics, time limits or error handling. The Suite 2 table puts them
beside tokenyard so that anyone can see, in the same run, how much of a front's CPU is the relaying itself
and how much is the gateway's work on each request.

- `callback`: asyncio protocols and httptools, no ASGI. Upstream body bytes are written to the client's
  socket from the parser's callback, and no task is woken per request or per chunk.
- `asgi`: a raw ASGI app under uvicorn (uvloop, httptools) over tokenyard's pooled client
  (engine_adapters.h1), with a task per request and one `send` per upstream read.

    python -m bench.bare_relay --upstream http://127.0.0.1:8201 --port 8213          # callback
    BARE_UPSTREAM=http://127.0.0.1:8201 uvicorn bench.bare_relay:app --port 8214     # asgi
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any
from urllib.parse import urlsplit

import httptools
import orjson
import uvloop

from engine_adapters.h1 import Pool

_CHUNKED = b"transfer-encoding: chunked\r\n\r\n"


class Upstream(asyncio.Protocol):
    """A kept-alive connection to the upstream, lent to one client request at a time. What one socket read
    brings (the head, body chunks, the end) goes to the client in one write."""

    def __init__(self, idle: list[Upstream]) -> None:
        self.idle, self.client, self.transport = idle, None, None
        self.parser = httptools.HttpResponseParser(self)
        self.content_type = b""
        self.out: list[bytes] = []
        self.done = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)
        if self.out:
            self.client.transport.write(b"".join(self.out))
            self.out.clear()
        if self.done:
            self.client, self.done = None, False
            self.idle.append(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self.content_type = value

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self.out.append(b"HTTP/1.1 %d OK\r\ncontent-type: %s\r\n%s" % (status, self.content_type, _CHUNKED))

    def on_body(self, body: bytes) -> None:
        self.out.append(b"%x\r\n%s\r\n" % (len(body), body))

    def on_message_complete(self) -> None:
        self.out.append(b"0\r\n\r\n")
        self.done = True


class Client(asyncio.Protocol):
    """One client connection: each whole request goes out on an idle upstream connection (or a new one)."""

    def __init__(self, upstream: tuple[str, int], idle: list[Upstream]) -> None:
        self.upstream, self.idle = upstream, idle
        self.parser = httptools.HttpRequestParser(self)
        self.url, self.body = b"", b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        request = b"POST %s HTTP/1.1\r\nhost: up\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
            self.url,
            len(self.body),
            self.body,
        )
        self.body = b""
        if self.idle:
            self.send(self.idle.pop(), request)
        else:
            asyncio.ensure_future(self.connect(request))

    def send(self, upstream: Upstream, request: bytes) -> None:
        upstream.client = self
        upstream.transport.write(request)

    async def connect(self, request: bytes) -> None:
        _, upstream = await asyncio.get_running_loop().create_connection(lambda: Upstream(self.idle), *self.upstream)
        self.send(upstream, request)


async def serve_callback(port: int, upstream_url: str) -> None:
    url = urlsplit(upstream_url)
    upstream, idle = (url.hostname or "127.0.0.1", url.port or 80), []
    server = await asyncio.get_running_loop().create_server(lambda: Client(upstream, idle), "127.0.0.1", port)
    await server.serve_forever()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The `asgi` floor (run by uvicorn). Its pool is made at start-up and kept in the lifespan's state."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            scope["state"]["pool"] = Pool(os.environ.get("BARE_UPSTREAM", "http://127.0.0.1:8201"), {})
            await send({"type": "lifespan.startup.complete"})
        scope["state"]["pool"].close()
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    pool: Pool = scope["state"]["pool"]
    conn = await pool.post(scope["path"], body)
    kind = b"text/event-stream" if orjson.loads(body).get("stream") else b"application/json"
    await send({"type": "http.response.start", "status": conn.status, "headers": [(b"content-type", kind)]})
    while data := await conn.read():
        await send({"type": "http.response.body", "body": data, "more_body": True})
    pool.release(conn)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def main() -> None:
    parser = argparse.ArgumentParser(description="Suite 2's callback floor: a bare relay with no ASGI.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    uvloop.run(serve_callback(args.port, args.upstream))


if __name__ == "__main__":
    main()
