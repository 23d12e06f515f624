"""Background responses: run after the POST has answered (`queued`), in this process, to their stored end;
cancelled through any replica; and, when created with `stream: true`, their events kept in the store so that
a client can read them again from any point (`GET /v1/responses/{id}?stream=true&starting_after=N`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.errors import GatewayError, InvalidRequest, error_payload
from gateway.services.responses import (
    Keeper,
    Prepared,
    opening_response,
    run_events,
    sse,
    start_engine,
    store_of,
)
from gateway.services.responses_output import OutputBuilder
from gateway.state import AppState
from gateway.store import ResponseStore
from gateway.store.responses import RUNNING

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often a resumed stream looks for new events
# A run writes its row's end just before its last events (so a client told "completed" finds it stored): a
# follower that finds the row ended waits this long for those events, then ends (their writer may have died).
ENDED_WAIT_S = 5.0
_TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


class BackgroundRun:
    def __init__(self, state: AppState, call: Prepared) -> None:
        self.state, self.call, self.store = state, call, store_of(state)
        self.response = opening_response(call.req, call.response_id, status="queued")
        self.keeper = Keeper(
            self.store, call.owner, call.items, background=True, streamed=call.req.stream, write_failed_on_release=False
        )
        self.task: asyncio.Task[None] | None = None
        self.cancelled_by_client = False

    def stop(self) -> None:
        """A cancel, made here or read from the store: the run stops and the cancel stands."""
        self.cancelled_by_client = True
        if self.task is not None:
            self.task.cancel()

    async def main(self) -> None:
        builder = OutputBuilder(self.response, None)
        try:
            self.response["status"] = "in_progress"
            with contextlib.suppress(GatewayError):
                await self.store.save(self.response)
            metered, chunks, plan = await start_engine(self.state, self.call)
            builder = OutputBuilder(self.response, plan)
            events = run_events(builder, self.keeper, metered, chunks, whole=False)
            async with contextlib.aclosing(events):  # type: ignore[type-var]  # an async generator, typed as the AsyncIterator it is read as (no aclose there)
                async for event in events:
                    await self._keep(event)
        except asyncio.CancelledError:
            if not self.cancelled_by_client:  # the server is stopping: the response ends failed, not missing
                await self._fail(builder, GatewayError("The server stopped while the response ran."))
        except Exception as exc:  # before the first chunk (after it, run_events ends the response itself)
            await self._fail(builder, exc)
        finally:
            self.store.running.pop(self.call.response_id, None)

    async def _keep(self, event: dict[str, Any]) -> None:
        if self.call.req.stream:
            try:
                await self.store.append_events(
                    self.call.response_id, [(event["sequence_number"], orjson.dumps(event).decode())]
                )
            except GatewayError:
                log.warning("an event of background response %s was not stored", self.call.response_id)

    async def _fail(self, builder: OutputBuilder, exc: BaseException) -> None:
        if not isinstance(exc, GatewayError):
            log.error("background response failed", exc_info=exc)
        events = builder.failed(error_payload(exc)[1]["error"])
        with contextlib.suppress(GatewayError):
            await self.store.save(self.response)
            for event in events:
                await self._keep(event)


async def start_background(state: AppState, call: Prepared) -> dict[str, Any] | AsyncIterator[bytes]:
    """Store the response (queued) and start it; answer the queued response, or its stream from the start."""
    run = BackgroundRun(state, call)
    await run.keeper.open(dict(run.response), stop=run.stop)  # store down: 503, and nothing runs
    run.task = asyncio.create_task(run.main(), name=f"background {call.response_id}")
    state.background_runs.add(run.task)
    run.task.add_done_callback(state.background_runs.discard)
    if call.req.stream:
        return await resume(run.store, call.owner, call.response_id, -1)
    return dict(run.response)


async def resume(store: ResponseStore, owner: str, response_id: str, starting_after: int) -> AsyncIterator[bytes]:
    """A background stream's events after `starting_after`, then the new ones as they are stored, to its end."""
    stored = await store.get(owner, response_id)
    if not stored.streamed:
        raise InvalidRequest(
            "Only background responses created with stream: true can be streamed again.", param="stream"
        )
    return _follow(store, owner, response_id, starting_after)


async def _follow(store: ResponseStore, owner: str, response_id: str, after: int) -> AsyncIterator[bytes]:
    ended_at: float | None = None
    while True:
        events = await store.events_after(response_id, after)
        for seq, data in events:
            event = orjson.loads(data)
            yield sse(event)
            after = seq
            if event["type"] in _TERMINAL_EVENTS:
                return
        if events:
            continue
        if ended_at is None and (await store.get(owner, response_id)).status not in RUNNING:
            if await _last_was_read(store, response_id, after):
                return
            ended_at = time.monotonic()
        if ended_at is not None and time.monotonic() - ended_at > ENDED_WAIT_S:
            return
        await asyncio.sleep(POLL_S)


async def _last_was_read(store: ResponseStore, response_id: str, after: int) -> bool:
    """Whether the ended run's terminal event is stored at or before `after` (a resume from past the end)."""
    stored = await store.events_after(response_id, -1)
    return bool(stored) and stored[-1][0] <= after and orjson.loads(stored[-1][1])["type"] in _TERMINAL_EVENTS
