"""engine_adapters.h1, the relay's HTTP/1.1 client, against a raw asyncio server that answers as scripted."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from engine_adapters.h1 import ConnectFailed, Pool, UpstreamClosed

CHUNKED = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Server:
    """Counts connections and requests; `answer(request_number, writer)` writes each response."""

    def __init__(self, answer: Callable[[int, asyncio.StreamWriter], object]) -> None:
        self.answer, self.connections, self.requests = answer, 0, 0
        self.bodies: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = int(
                    next(
                        line.split(b":")[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    )
                )
                self.bodies.append(await reader.readexactly(length))
                self.requests += 1
                result = self.answer(self.requests, writer)
                if asyncio.iscoroutine(result):
                    await result
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Server], asyncio.Future[str]]]:
    servers: list[asyncio.Server] = []

    async def start(server: Server) -> str:
        srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        servers.append(srv)
        return f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"

    yield start  # type: ignore[misc]
    for srv in servers:
        srv.close()


def sse_answer(number: int, writer: asyncio.StreamWriter) -> None:
    writer.write(CHUNKED + chunk(b"data: %d\n\n" % number) + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")


async def read_answer(pool: Pool) -> bytes:
    """One request's whole answer; its connection back to the pool."""
    conn = await pool.post("/x", b"{}")
    body = await conn.read_all()
    pool.release(conn)
    return body


async def test_streams_a_chunked_body_and_reuses_the_connection(serve) -> None:
    server = Server(sse_answer)
    pool = Pool(await serve(server), {"authorization": "Bearer k"})
    for number in (1, 2, 3):
        conn = await pool.post("/v1/completions", b'{"a":1}')
        assert conn.status == 200
        assert await conn.read_all() == b"data: %d\n\ndata: [DONE]\n\n" % number
        pool.release(conn)
    assert (server.requests, server.connections) == (3, 1)
    assert server.bodies == [b'{"a":1}'] * 3
    pool.close()


async def test_a_kept_connection_the_server_closed_is_replaced(serve) -> None:
    def answer_then_close(number: int, writer: asyncio.StreamWriter) -> None:
        sse_answer(number, writer)
        writer.close()  # the server drops the connection after each answer, without saying so

    server = Server(answer_then_close)
    pool = Pool(await serve(server), {})
    for number in (1, 2):
        assert await read_answer(pool) == b"data: %d\n\ndata: [DONE]\n\n" % number
        await asyncio.sleep(0.05)
    assert server.connections == 2


async def test_a_request_on_a_connection_closing_meanwhile_is_sent_again(serve) -> None:
    def second_unanswered(number: int, writer: asyncio.StreamWriter) -> None:
        if number == 2:
            writer.close()  # closed as the request came in: nothing was answered, so it may go again
        else:
            sse_answer(number, writer)

    server = Server(second_unanswered)
    pool = Pool(await serve(server), {})
    for expected in (1, 3):
        assert await read_answer(pool) == b"data: %d\n\ndata: [DONE]\n\n" % expected
    assert (server.requests, server.connections) == (3, 2)


async def test_a_body_that_runs_to_the_end_of_the_connection(serve) -> None:
    def unframed(number: int, writer: asyncio.StreamWriter) -> None:
        writer.write(b'HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{"tokens": [1]}')
        writer.close()

    pool = Pool(await serve(Server(unframed)), {})
    conn = await pool.post("/tokenize", b"{}")
    assert await conn.read_all() == b'{"tokens": [1]}'
    pool.release(conn)
    assert not pool.idle


async def test_a_stream_cut_short_fails_the_read(serve) -> None:
    def cut(number: int, writer: asyncio.StreamWriter) -> None:
        writer.write(CHUNKED + chunk(b"data: 1\n\n"))
        writer.close()

    pool = Pool(await serve(Server(cut)), {})
    conn = await pool.post("/x", b"{}")
    assert await conn.read() == b"data: 1\n\n"
    with pytest.raises(UpstreamClosed):
        await conn.read()


async def test_not_http_is_an_upstream_error(serve) -> None:
    pool = Pool(await serve(Server(lambda n, w: w.write(b"SSH-2.0-OpenSSH\r\n\r\n"))), {})
    with pytest.raises(UpstreamClosed):
        await pool.post("/x", b"{}")


async def test_fail_ends_a_pending_read(serve) -> None:
    async def slow(number: int, writer: asyncio.StreamWriter) -> None:
        writer.write(CHUNKED)
        await asyncio.sleep(5)

    pool = Pool(await serve(Server(slow)), {})
    conn = await pool.post("/x", b"{}")
    asyncio.get_running_loop().call_later(0.05, conn.fail, TimeoutError())
    with pytest.raises(TimeoutError):
        await conn.read()
    pool.release(conn)  # unfinished: closed, not kept
    assert not pool.idle


async def test_refused_connection() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectFailed):
        await Pool(f"http://127.0.0.1:{port}", {}).post("/x", b"{}")


async def test_a_slow_reader_pauses_the_socket(serve) -> None:
    big = b"x" * (256 * 1024)

    def flood(number: int, writer: asyncio.StreamWriter) -> None:
        writer.write(CHUNKED + chunk(big) * 16 + b"0\r\n\r\n")

    pool = Pool(await serve(Server(flood)), {})
    conn = await pool.post("/x", b"{}")
    await asyncio.sleep(0.2)  # nothing read: the buffer stops near the high-water mark
    assert conn.paused and conn.buffered < 4 * 1024 * 1024
    assert len(await conn.read_all()) == len(big) * 16


async def test_a_body_hook_takes_pieces_until_it_declines_one(serve) -> None:
    async def paced(number: int, writer: asyncio.StreamWriter) -> None:
        writer.write(CHUNKED)
        await writer.drain()
        await asyncio.sleep(0.02)  # the head alone, so that the hook below is set before any body comes
        for part in (b"a", b"b", b"stop", b"c"):
            writer.write(chunk(part))
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(b"0\r\n\r\n")

    pool = Pool(await serve(Server(paced)), {})
    conn = await pool.post("/x", b"{}")
    taken: list[bytes] = []
    wakes = 0

    def hook(data: bytes) -> bool:
        if data == b"stop":
            return False
        taken.append(data)
        return True

    wake = conn._wake

    def counted() -> None:
        nonlocal wakes
        wakes += 1
        wake()

    conn._wake = counted  # type: ignore[method-assign]
    conn.on_data = hook
    assert await conn.read() == b"stop"
    assert taken == [b"a", b"b"] and wakes == 1  # the reader was woken for the piece declined only
    assert conn.on_data is None  # unset by the refusal, so what follows is buffered in order
    assert await conn.read_all() == b"c"
    pool.release(conn)


async def test_connections_the_server_closed_do_not_hold_the_idle_slots(serve) -> None:
    pool = Pool(await serve(Server(sse_answer)), {}, max_idle=2)
    conns = [await pool.post("/x", b"{}") for _ in range(3)]
    for conn in conns:
        await conn.read_all()
    pool.release(conns[0])
    pool.release(conns[1])
    for conn in conns[:2]:
        conn.transport.close()  # as the server's keep-alive timeout would
    await asyncio.sleep(0.05)
    pool.release(conns[2])
    assert pool.idle == [conns[2]]
