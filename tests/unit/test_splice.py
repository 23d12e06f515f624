"""The splice reads uvicorn's request cycle below its public API (engine_adapters.splice): the attributes it
reads must still exist in the uvicorn installed, and its switch must be settable."""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from engine_adapters.client_socket import CYCLE_ATTRIBUTES, ClientSocket
from engine_adapters.splice import CountingSink
from gateway.settings import Settings


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return False


async def test_uvicorns_cycle_still_has_what_the_splice_reads() -> None:
    transport = Transport()
    cycle = RequestResponseCycle(
        scope={"type": "http"},
        transport=transport,
        flow=FlowControl(transport),
        logger=None,  # type: ignore[arg-type]
        access_logger=None,
        access_log=False,
        default_headers=[],
        message_event=asyncio.Event(),  # type: ignore[arg-type]
        expect_100_continue=False,
        keep_alive=True,
        on_response=lambda: None,
    )
    for name in CYCLE_ATTRIBUTES:
        assert hasattr(cycle, name), name
    assert hasattr(cycle.flow, "write_paused")
    socket = ClientSocket(cycle, asyncio.get_running_loop())
    assert not socket.ready()  # no response started: the plain way
    cycle.response_started, cycle.chunked_encoding = True, True
    assert socket.ready()
    seen: list[bytes] = []
    CountingSink(socket, seen.append).write(b"data: {}\n\n")
    assert seen == [b"data: {}\n\n"] and transport.written == [b"a\r\ndata: {}\n\n\r\n"]


def test_the_splice_switch() -> None:
    assert Settings().router.splice is True
    assert Settings(router={"splice": False}).router.splice is False
