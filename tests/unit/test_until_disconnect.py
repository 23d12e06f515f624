"""gateway.services.disconnect.until_disconnect: the work is cancelled when the client leaves, told either by
uvicorn's connection (ClientSocket.lost) or by `receive`'s disconnect message."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from engine_adapters.client_socket import CLIENT_SOCKET, ClientSocket
from gateway.services.disconnect import ClientDisconnected, until_disconnect


class Work:
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = False

    async def run(self) -> str:
        self.started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return "done"


def scope_with(writer: ClientSocket) -> dict[str, Any]:
    return {"type": "http", "extensions": {CLIENT_SOCKET: writer}}


async def never_receive() -> dict[str, Any]:
    await asyncio.sleep(10)
    return {"type": "http.disconnect"}


async def test_a_receive_disconnect_cancels_the_work() -> None:
    work, gone = Work(), asyncio.Event()

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    running = asyncio.ensure_future(until_disconnect(receive, work.run()))
    await work.started.wait()
    gone.set()
    with pytest.raises(ClientDisconnected):
        await running
    assert work.cancelled


async def test_the_connection_tells_of_a_disconnect_without_a_watcher() -> None:
    work = Work()
    writer = ClientSocket(SimpleNamespace(disconnected=False), asyncio.get_running_loop())
    tasks_before = len(asyncio.all_tasks())
    running = asyncio.ensure_future(until_disconnect(never_receive, work.run(), scope_with(writer)))
    await work.started.wait()
    assert len(asyncio.all_tasks()) == tasks_before + 1  # only the request's own task
    assert writer.lost is not None
    writer.lost()
    with pytest.raises(ClientDisconnected):
        await running
    assert work.cancelled and writer.lost is None


async def test_a_client_gone_before_the_work_starts_never_starts_it() -> None:
    work = Work()
    writer = ClientSocket(SimpleNamespace(disconnected=True), asyncio.get_running_loop())
    with pytest.raises(ClientDisconnected):
        await until_disconnect(never_receive, work.run(), scope_with(writer))
    assert not work.started.is_set()


async def test_work_that_ends_first_is_not_cancelled_later() -> None:
    writer = ClientSocket(SimpleNamespace(disconnected=False), asyncio.get_running_loop())

    async def quick() -> str:
        return "answer"

    assert await until_disconnect(never_receive, quick(), scope_with(writer)) == "answer"
    assert writer.lost is None  # a disconnect after the answer cancels nothing
    await asyncio.sleep(0.01)
