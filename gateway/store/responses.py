"""Stored responses: what /v1/responses keeps when `store` is true, owned by the key that made it.

A response is written when it starts (in progress) and again, whole, before its last event is sent, so
that it is never missing and never half written. While it runs, its process marks it alive every
`heartbeat_s`; one that has not been marked for `stale_after_s` (its process died) is marked failed by
any replica. The same loop reads cancels made through another replica, and purges expired responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from gateway.errors import GatewayError, InvalidRequest, NotFound, StoreUnavailable
from gateway.observability.metrics import Metrics
from gateway.settings import StoreSettings
from gateway.store.db import Database
from gateway.store.migrate import migrate
from gateway.store.schema import response_events, responses

log = logging.getLogger(__name__)

RUNNING = ("queued", "in_progress")
_COLUMNS = (
    responses.c.id,
    responses.c.status,
    responses.c.background,
    responses.c.streamed,
    responses.c.previous_response_id,
    responses.c.body,
    responses.c.input_items,
)


@dataclass(frozen=True)
class StoredResponse:
    id: str
    status: str
    background: bool
    streamed: bool
    previous_response_id: str | None
    body: dict[str, Any]
    input_items: list[dict[str, Any]]

    @property
    def running(self) -> bool:
        return self.status in RUNNING


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"No response found with id '{response_id}'.", param="response_id")


class ResponseStore:
    def __init__(
        self, database: Database, settings: StoreSettings, metrics: Metrics, clock: Callable[[], float] = time.time
    ) -> None:
        self.db, self.settings, self.metrics, self.clock = database, settings, metrics, clock
        self.migrated = False
        self.running: dict[str, Callable[[], None]] = {}  # response id -> how to cancel it in this process
        self._maintainer: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[bool]] = set()  # save_later's, awaited at close

    async def start(self) -> None:
        """Migrate now; a database that is down leaves the store to migrate on first use (store: false serves)."""
        with contextlib.suppress(StoreUnavailable):
            await self._ready()
        if not self.migrated:
            log.warning("the response store is unavailable at start; requests with store: true answer 503")

    def maintain(self) -> None:
        """Start the loop that marks running responses alive, reads cancels, fails stale runs and purges
        (once the engines are up: their start may hold the event loop past a store timeout)."""
        self._maintainer = asyncio.create_task(self._maintain(), name="response-store")

    def save_later(self, body: dict[str, Any]) -> None:
        """save(), in its own task; its failure is logged by the transaction and otherwise dropped."""
        task = asyncio.create_task(self._save_quietly(body))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _save_quietly(self, body: dict[str, Any]) -> bool:
        try:
            return await self.save(body)
        except GatewayError:
            return False

    async def close(self) -> None:
        await asyncio.gather(*self._writes)
        if self._maintainer is not None:
            self._maintainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintainer
        await self.db.close()

    async def ensure_schema(self) -> None:
        """Migrate now unless done already: the keys table (gateway.store.keys) shares the schema."""
        await self._ready()

    async def _ready(self) -> None:
        if not self.migrated:
            await migrate(self.db)
            self.migrated = True

    async def create(
        self,
        owner: str,
        body: dict[str, Any],
        input_items: list[dict[str, Any]],
        *,
        background: bool,
        streamed: bool,
    ) -> None:
        await self._ready()
        now = self.clock()
        async with self.db.transaction("create") as conn:
            await conn.execute(
                responses.insert().values(
                    id=body["id"],
                    owner=owner,
                    status=body["status"],
                    background=background,
                    streamed=streamed,
                    cancel_requested=False,
                    previous_response_id=body.get("previous_response_id"),
                    created_at=now,
                    updated_at=now,
                    expires_at=now + self.settings.retention_days * 86400,
                    body=body,
                    input_items=input_items,
                )
            )

    async def save(self, body: dict[str, Any]) -> bool:
        """Write the response as it stands; False when it was cancelled meanwhile (the cancel stands)."""
        await self._ready()
        async with self.db.transaction("save") as conn:
            result = await conn.execute(
                responses.update()
                .where(responses.c.id == body["id"], responses.c.cancel_requested.is_(False))
                .values(status=body["status"], body=body, updated_at=self.clock())
            )
        return bool(result.rowcount)

    async def get(self, owner: str, response_id: str) -> StoredResponse:
        await self._ready()
        async with self.db.transaction("get") as conn:
            row = (
                await conn.execute(
                    sa.select(*_COLUMNS).where(
                        responses.c.id == response_id,
                        responses.c.owner == owner,
                        responses.c.expires_at > self.clock(),
                    )
                )
            ).first()
        if row is None:
            raise _not_found(response_id)
        return StoredResponse(*row)

    async def delete(self, owner: str, response_id: str) -> None:
        await self._ready()
        async with self.db.transaction("delete") as conn:
            result = await conn.execute(
                responses.delete().where(responses.c.id == response_id, responses.c.owner == owner)
            )
            await conn.execute(response_events.delete().where(response_events.c.response_id == response_id))
        if not result.rowcount:
            raise _not_found(response_id)

    async def history(self, owner: str, response_id: str) -> list[dict[str, Any]]:
        """The conversation a continuation carries on: each response's input items and then its output,
        oldest first, along the chain of previous_response_id."""
        chain: list[StoredResponse] = []
        next_id: str | None = response_id
        while next_id is not None:
            try:
                stored = await self.get(owner, next_id)
            except NotFound:
                raise NotFound(
                    f"Previous response with id '{next_id}' not found.", param="previous_response_id"
                ) from None
            if stored.running:
                raise InvalidRequest(
                    f"Previous response '{stored.id}' is still in progress; continue it once it is done.",
                    param="previous_response_id",
                )
            chain.append(stored)
            next_id = stored.previous_response_id
        items: list[dict[str, Any]] = []
        for stored in reversed(chain):
            items.extend(stored.input_items)
            items.extend(stored.body.get("output", []))
        return items

    async def cancel(self, owner: str, response_id: str) -> StoredResponse:
        """Mark a running background response cancelled; its process stops it (here, or at its next heartbeat)."""
        stored = await self.get(owner, response_id)
        if not stored.background:
            raise InvalidRequest("Only responses created with background: true can be cancelled.")
        if stored.status == "cancelled":
            return stored
        if not stored.running:
            raise InvalidRequest(f"Cannot cancel a response whose status is {stored.status}.")
        body = {**stored.body, "status": "cancelled"}
        async with self.db.transaction("cancel") as conn:
            await conn.execute(
                responses.update()
                .where(responses.c.id == response_id, responses.c.status.in_(RUNNING))
                .values(status="cancelled", body=body, cancel_requested=True, updated_at=self.clock())
            )
        stop = self.running.get(response_id)
        if stop is not None:
            stop()
        return await self.get(owner, response_id)

    async def append_events(self, response_id: str, events: list[tuple[int, str]]) -> None:
        if not events:
            return
        async with self.db.transaction("append_events") as conn:
            await conn.execute(
                response_events.insert(), [{"response_id": response_id, "seq": s, "data": d} for s, d in events]
            )

    async def events_after(self, response_id: str, after: int) -> list[tuple[int, str]]:
        async with self.db.transaction("read_events") as conn:
            rows = await conn.execute(
                sa.select(response_events.c.seq, response_events.c.data)
                .where(response_events.c.response_id == response_id, response_events.c.seq > after)
                .order_by(response_events.c.seq)
            )
            return [(int(seq), str(data)) for seq, data in rows]

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            try:
                await self._ready()
                await self._heartbeat()
                await self._fail_stale()
                await self._purge()
                await self._count()
            except GatewayError:
                pass  # the store is down: logged by the transaction, tried again at the next beat

    async def _heartbeat(self) -> None:
        ids = list(self.running)
        if not ids:
            return
        async with self.db.transaction("heartbeat") as conn:
            await conn.execute(responses.update().where(responses.c.id.in_(ids)).values(updated_at=self.clock()))
            cancelled = await conn.execute(
                sa.select(responses.c.id).where(responses.c.id.in_(ids), responses.c.cancel_requested.is_(True))
            )
        for (response_id,) in cancelled:
            stop = self.running.get(response_id)
            if stop is not None:
                stop()

    async def _fail_stale(self) -> None:
        cutoff = self.clock() - self.settings.stale_after_s
        stale = (responses.c.status.in_(RUNNING), responses.c.updated_at < cutoff)
        async with self.db.transaction("fail_stale") as conn:
            rows = (await conn.execute(sa.select(responses.c.id, responses.c.body).where(*stale))).all()
            for response_id, body in rows:
                error = {"code": "server_error", "message": "The server running this response stopped."}
                failed = {**body, "status": "failed", "error": error}
                await conn.execute(
                    responses.update()
                    .where(responses.c.id == response_id, *stale)
                    .values(status="failed", body=failed, updated_at=self.clock())
                )
        if rows:
            log.warning("marked %d response(s) failed whose process stopped", len(rows))

    async def _purge(self) -> None:
        now = self.clock()
        async with self.db.transaction("purge") as conn:
            expired = sa.select(responses.c.id).where(responses.c.expires_at <= now)
            await conn.execute(response_events.delete().where(response_events.c.response_id.in_(expired)))
            await conn.execute(responses.delete().where(responses.c.expires_at <= now))

    async def _count(self) -> None:
        async with self.db.transaction("count") as conn:
            rows = await conn.execute(sa.select(responses.c.status, sa.func.count()).group_by(responses.c.status))
            counts = {str(status): int(count) for status, count in rows}
        for status in ("queued", "in_progress", "completed", "incomplete", "failed", "cancelled"):
            self.metrics.stored_responses.labels(status).set(counts.get(status, 0))
