"""Batches and their lines: what /v1/batches shows, and the rows through which router replicas share the work.

A batch is `validating` until a runner reads its input file into lines (one transaction: the lines and
`in_progress`, or `failed` with the file's errors). A runner claims pending lines in the database (PostgreSQL:
`FOR UPDATE SKIP LOCKED`, so replicas never wait on each other's claims; SQLite: its single writer, BEGIN
IMMEDIATE), each under a lease that it renews while the line runs; a line whose lease ran out (its process was
killed) is claimed again. A line's result is written once: only while the line is not done, so a second
writer of the same (batch, custom_id) changes nothing. When no line is left (or the batch expired, or was
cancelled), one runner writes the output and error files and the final status in one transaction.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.errors import InvalidRequest, NotFound
from gateway.store.db import Database, after_row
from gateway.store.files import FileStore
from gateway.store.schema import batch_lines, batches

STAGES = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")
STATUSES = ("validating", *STAGES)
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
_PAGE = 1000  # lines read at a time when a batch's files are written
# A batch's lines stored, or its files written: one transaction each, which may take long for 50,000 lines.
BULK_TIMEOUT_S = 600.0


def new_batch_id() -> str:
    return f"batch_{os.urandom(12).hex()}"


def new_request_id() -> str:
    return f"batch_req_{os.urandom(12).hex()}"


@dataclass(frozen=True)
class Line:
    batch_id: str
    line: int
    custom_id: str
    body: dict[str, Any]
    owner: str
    endpoint: str


@dataclass(frozen=True)
class NewLine:
    """A line as the input file gave it: its request body, or the error it is answered with (`result`)."""

    line: int
    custom_id: str
    body: dict[str, Any] | None
    result: dict[str, Any] | None = None


def _not_found(batch_id: str) -> NotFound:
    return NotFound(f"No batch found with id '{batch_id}'.", param="batch_id")


def _time(value: float | None) -> int | None:
    return None if value is None else int(value)


class BatchStore:
    def __init__(self, database: Database, files: FileStore, clock: Callable[[], float] = time.time) -> None:
        self.db, self.files, self.clock = database, files, clock

    # --- the API's side ---------------------------------------------------------------------------

    async def create(
        self, owner: str, input_file_id: str, endpoint: str, window_s: float, window: str, metadata: Any
    ) -> dict[str, Any]:
        now = self.clock()
        batch_id = new_batch_id()
        async with self.db.transaction("batch_create") as conn:
            await conn.execute(
                batches.insert().values(
                    id=batch_id,
                    owner=owner,
                    status="validating",
                    endpoint=endpoint,
                    input_file_id=input_file_id,
                    completion_window=window,
                    metadata=metadata,
                    total=0,
                    created_at=now,
                    expires_at=now + window_s,
                )
            )
        return await self.get(owner, batch_id)

    async def get(self, owner: str, batch_id: str) -> dict[str, Any]:
        async with self.db.transaction("batch_get") as conn:
            row = (
                await conn.execute(sa.select(batches).where(batches.c.id == batch_id, batches.c.owner == owner))
            ).first()
            if row is None:
                raise _not_found(batch_id)
            return await self._object(conn, row._mapping)

    async def page(self, owner: str, limit: int, after: str | None) -> tuple[list[dict[str, Any]], bool]:
        """A page of the owner's batches, newest first, after the batch `after`."""
        query = sa.select(batches).where(batches.c.owner == owner)
        async with self.db.transaction("batch_list") as conn:
            if after is not None:
                later = await after_row(conn, batches, owner, after, descending=True)
                if later is None:
                    raise _not_found(after)
                query = query.where(later)
            rows = (
                await conn.execute(query.order_by(batches.c.created_at.desc(), batches.c.id.desc()).limit(limit + 1))
            ).all()
            objects = [await self._object(conn, row._mapping) for row in rows[:limit]]
        return objects, len(rows) > limit

    async def cancel(self, owner: str, batch_id: str) -> tuple[dict[str, Any], bool]:
        """Ask a running batch to stop: `cancelling` now, `cancelled` once its running lines end. True when
        this call changed it."""
        async with self.db.transaction("batch_cancel") as conn:
            row = (
                await conn.execute(
                    sa.select(batches.c.status).where(batches.c.id == batch_id, batches.c.owner == owner)
                )
            ).first()
            if row is None:
                raise _not_found(batch_id)
            if row[0] in ("cancelling", "cancelled"):
                changed = False
            elif row[0] not in ("validating", "in_progress"):
                raise InvalidRequest(f"Cannot cancel a batch with status '{row[0]}'.")
            else:
                result = await conn.execute(
                    batches.update()
                    .where(batches.c.id == batch_id, batches.c.status.in_(("validating", "in_progress")))
                    .values(status="cancelling", cancelling_at=self.clock())
                )
                changed = bool(result.rowcount)
        return await self.get(owner, batch_id), changed

    async def _object(self, conn: AsyncConnection, row: Any) -> dict[str, Any]:
        """OpenAI's Batch object, its request_counts counted from the lines now."""
        counts = await conn.execute(
            sa.select(batch_lines.c.outcome, sa.func.count())
            .where(batch_lines.c.batch_id == row["id"], batch_lines.c.state == "done")
            .group_by(batch_lines.c.outcome)
        )
        done = {str(outcome): int(count) for outcome, count in counts}
        return {
            "id": row["id"],
            "object": "batch",
            "endpoint": row["endpoint"],
            "errors": row["errors"],
            "input_file_id": row["input_file_id"],
            "completion_window": row["completion_window"],
            "status": row["status"],
            "output_file_id": row["output_file_id"],
            "error_file_id": row["error_file_id"],
            "created_at": int(row["created_at"]),
            "expires_at": int(row["expires_at"]),
            **{f"{stage}_at": _time(row[f"{stage}_at"]) for stage in STAGES},
            "request_counts": {
                "total": row["total"],
                "completed": done.get("output", 0),
                "failed": done.get("error", 0),
            },
            "metadata": row["metadata"],
        }

    # --- the runner's side ------------------------------------------------------------------------

    async def validating(self) -> list[tuple[str, str, str]]:
        """Batches waiting to be read: (id, owner, input_file_id)."""
        async with self.db.transaction("batch_validating") as conn:
            rows = await conn.execute(
                sa.select(batches.c.id, batches.c.owner, batches.c.input_file_id)
                .where(batches.c.status == "validating")
                .order_by(batches.c.created_at)
            )
            return [(str(a), str(b), str(c)) for a, b, c in rows]

    async def start(self, batch_id: str, lines: list[NewLine]) -> bool:
        """The batch's lines in, and `in_progress`, together; False when another runner read it first."""
        now = self.clock()
        async with self.db.transaction("batch_start", BULK_TIMEOUT_S) as conn:
            moved = await conn.execute(
                batches.update()
                .where(batches.c.id == batch_id, batches.c.status == "validating")
                .values(status="in_progress", in_progress_at=now, total=len(lines))
            )
            if not moved.rowcount:
                return False
            rows = [
                {
                    "batch_id": batch_id,
                    "line": new.line,
                    "custom_id": new.custom_id,
                    "body": new.body,
                    "state": "pending" if new.result is None else "done",
                    "attempts": 0,
                    "not_before": 0.0,
                    "outcome": None if new.result is None else "error",
                    "result": new.result,
                }
                for new in lines
            ]
            for start in range(0, len(rows), _PAGE):
                await conn.execute(batch_lines.insert(), rows[start : start + _PAGE])
        return True

    async def fail(self, batch_id: str, errors: list[dict[str, Any]]) -> bool:
        """A batch whose input file cannot be run: `failed`, with the file's errors (line numbers)."""
        async with self.db.transaction("batch_fail") as conn:
            moved = await conn.execute(
                batches.update()
                .where(batches.c.id == batch_id, batches.c.status == "validating")
                .values(status="failed", failed_at=self.clock(), errors={"object": "list", "data": errors})
            )
        return bool(moved.rowcount)

    async def running(self) -> list[tuple[str, float]]:
        """Batches whose lines may be claimed: (id, expires_at), oldest first."""
        async with self.db.transaction("batch_running") as conn:
            rows = await conn.execute(
                sa.select(batches.c.id, batches.c.expires_at)
                .where(batches.c.status == "in_progress")
                .order_by(batches.c.created_at)
            )
            return [(str(batch_id), float(expires_at)) for batch_id, expires_at in rows]

    async def claim(self, batch_id: str, worker: str, count: int, lease_s: float, batch_limit: int) -> list[Line]:
        """Up to `count` lines of the batch, pending (and due) or abandoned (their lease ran out), now this
        worker's, and no more than `batch_limit` of the batch's running at once over every replica (two replicas
        claiming at the same moment may each see the other's claims only once they commit: a brief overshoot).
        Lines another replica is claiming at this moment are skipped, not waited for."""
        now = self.clock()
        claimable = sa.or_(
            sa.and_(batch_lines.c.state == "pending", batch_lines.c.not_before <= now),
            sa.and_(batch_lines.c.state == "running", batch_lines.c.claimed_at < now - lease_s),
        )
        async with self.db.transaction("batch_claim") as conn:
            head = (
                await conn.execute(
                    sa.select(batches.c.owner, batches.c.endpoint).where(
                        batches.c.id == batch_id, batches.c.status == "in_progress"
                    )
                )
            ).first()
            if head is None:
                return []
            running = (
                await conn.execute(
                    sa.select(sa.func.count()).where(
                        batch_lines.c.batch_id == batch_id,
                        batch_lines.c.state == "running",
                        batch_lines.c.claimed_at >= now - lease_s,
                    )
                )
            ).scalar_one()
            count = min(count, batch_limit - int(running))
            if count <= 0:
                return []
            rows = (
                await conn.execute(
                    sa.select(batch_lines.c.line, batch_lines.c.custom_id, batch_lines.c.body)
                    .where(batch_lines.c.batch_id == batch_id, claimable)
                    .order_by(batch_lines.c.line)
                    .limit(count)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if rows:
                await conn.execute(
                    batch_lines.update()
                    .where(batch_lines.c.batch_id == batch_id, batch_lines.c.line.in_([row[0] for row in rows]))
                    .values(state="running", claimed_by=worker, claimed_at=now, attempts=batch_lines.c.attempts + 1)
                )
        return [Line(batch_id, int(line), str(custom_id), body, head[0], head[1]) for line, custom_id, body in rows]

    async def renew(self, worker: str, lines: list[tuple[str, int]]) -> None:
        """This worker's running lines are alive: their leases start again."""
        if not lines:
            return
        async with self.db.transaction("batch_renew") as conn:
            for batch_id, numbers in _by_batch(lines).items():
                await conn.execute(
                    batch_lines.update()
                    .where(
                        batch_lines.c.batch_id == batch_id,
                        batch_lines.c.line.in_(numbers),
                        batch_lines.c.state == "running",
                        batch_lines.c.claimed_by == worker,
                    )
                    .values(claimed_at=self.clock())
                )

    async def record(self, line: Line, outcome: str, result: dict[str, Any]) -> bool:
        """The line's result, written once: False when it was done already (by another runner, or expired)."""
        async with self.db.transaction("batch_record") as conn:
            written = await conn.execute(
                batch_lines.update()
                .where(
                    batch_lines.c.batch_id == line.batch_id,
                    batch_lines.c.line == line.line,
                    batch_lines.c.state != "done",
                )
                .values(state="done", outcome=outcome, result=result, claimed_by=None)
            )
        return bool(written.rowcount)

    async def release(self, line: Line, worker: str, retry_s: float) -> None:
        """A line refused for load goes back, to be tried again after `retry_s` (by any runner)."""
        async with self.db.transaction("batch_release") as conn:
            await conn.execute(
                batch_lines.update()
                .where(
                    batch_lines.c.batch_id == line.batch_id,
                    batch_lines.c.line == line.line,
                    batch_lines.c.state == "running",
                    batch_lines.c.claimed_by == worker,
                )
                .values(state="pending", claimed_by=None, not_before=self.clock() + retry_s)
            )

    async def to_finish(self, lease_s: float) -> list[tuple[str, str]]:
        """Batches ready for their files: (id, the status they end in)."""
        now = self.clock()
        undone = sa.select(batch_lines.c.line).where(
            batch_lines.c.batch_id == batches.c.id, batch_lines.c.state != "done"
        )
        live = sa.select(batch_lines.c.line).where(
            batch_lines.c.batch_id == batches.c.id,
            batch_lines.c.state == "running",
            batch_lines.c.claimed_at >= now - lease_s,
        )
        async with self.db.transaction("batch_to_finish") as conn:
            rows = await conn.execute(
                sa.select(batches.c.id, batches.c.status, batches.c.expires_at).where(
                    sa.or_(
                        sa.and_(
                            batches.c.status == "in_progress", sa.or_(~undone.exists(), batches.c.expires_at <= now)
                        ),
                        sa.and_(batches.c.status == "cancelling", ~live.exists()),
                        sa.and_(batches.c.status == "finalizing", batches.c.finalizing_at < now - lease_s),
                    )
                )
            )
            found = []
            for batch_id, status, expires_at in rows:
                if status == "cancelling":
                    found.append((str(batch_id), "cancelled"))
                elif status == "in_progress" and expires_at <= now:
                    found.append((str(batch_id), "expired"))
                else:
                    found.append((str(batch_id), "completed"))
            return found

    async def mark_finalizing(self, batch_id: str) -> bool:
        async with self.db.transaction("batch_finalizing") as conn:
            moved = await conn.execute(
                batches.update()
                .where(batches.c.id == batch_id, batches.c.status == "in_progress")
                .values(status="finalizing", finalizing_at=self.clock())
            )
        return bool(moved.rowcount)

    async def finish(self, batch_id: str, final: str) -> bool:
        """Lines left undone end as errors (expired or cancelled), then the output and error files and the final
        status, in one transaction; False when another runner finished it first."""
        expected = {"completed": "finalizing", "expired": "in_progress", "cancelled": "cancelling"}[final]
        now = self.clock()
        async with self.db.transaction("batch_finish", BULK_TIMEOUT_S) as conn:
            row = (
                await conn.execute(
                    sa.select(batches.c.owner, batches.c.status).where(batches.c.id == batch_id).with_for_update()
                )
            ).first()
            if row is None or row[1] != expected:
                return False
            owner = str(row[0])
            if final != "completed":
                await self._end_undone(conn, batch_id, final)
            values: dict[str, Any] = {"status": final, f"{final}_at": now}
            if final != "completed":
                values["finalizing_at"] = now
            for outcome, column in (("output", "output_file_id"), ("error", "error_file_id")):
                name = f"{batch_id}_{outcome}.jsonl"
                values[column] = await self.files.write_in(conn, owner, name, self._results(conn, batch_id, outcome))
            await conn.execute(batches.update().where(batches.c.id == batch_id).values(**values))
        return True

    async def _end_undone(self, conn: AsyncConnection, batch_id: str, final: str) -> None:
        code = "batch_expired" if final == "expired" else "batch_cancelled"
        message = (
            "This request could not be executed before the completion window expired."
            if final == "expired"
            else "This request was not executed because the batch was cancelled."
        )
        rows = await conn.execute(
            sa.select(batch_lines.c.line, batch_lines.c.custom_id).where(
                batch_lines.c.batch_id == batch_id, batch_lines.c.state != "done"
            )
        )
        for line, custom_id in rows.all():
            result = {
                "id": new_request_id(),
                "custom_id": custom_id,
                "response": None,
                "error": {"code": code, "message": message},
            }
            await conn.execute(
                batch_lines.update()
                .where(batch_lines.c.batch_id == batch_id, batch_lines.c.line == line)
                .values(state="done", outcome="error", result=result, claimed_by=None)
            )

    async def _results(self, conn: AsyncConnection, batch_id: str, outcome: str) -> AsyncIterator[bytes]:
        """The batch's results of one outcome as JSONL lines, in the input's order, read a page at a time."""
        last = 0
        while True:
            rows = (
                await conn.execute(
                    sa.select(batch_lines.c.line, batch_lines.c.result)
                    .where(
                        batch_lines.c.batch_id == batch_id,
                        batch_lines.c.outcome == outcome,
                        batch_lines.c.line > last,
                    )
                    .order_by(batch_lines.c.line)
                    .limit(_PAGE)
                )
            ).all()
            if not rows:
                return
            for line, result in rows:
                yield orjson.dumps(result) + b"\n"
                last = int(line)

    async def count(self) -> dict[str, int]:
        async with self.db.transaction("batch_count") as conn:
            rows = await conn.execute(sa.select(batches.c.status, sa.func.count()).group_by(batches.c.status))
            return {str(status): int(count) for status, count in rows}


def _by_batch(lines: list[tuple[str, int]]) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = {}
    for batch_id, line in lines:
        grouped.setdefault(batch_id, []).append(line)
    return grouped
