"""Files of the Batch API: uploads (purpose batch or user_data) and the output and error files of batches.

A file's bytes go in as they arrive, in chunks of CHUNK_BYTES, and come out the same way: nothing holds a
whole file. They live in the SQL store (table file_chunks, so that one backup holds everything), or, with
batch.files_dir set, in that directory (a volume the replicas share), one file per id; the metadata is in the
table files either way. A file is listed only once its last byte is written (status processed).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.errors import NotFound
from gateway.settings import BatchSettings
from gateway.store.db import Database, after_row
from gateway.store.schema import file_chunks, files

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
PURPOSES = ("batch", "user_data", "batch_output")


def new_file_id() -> str:
    return f"file-{os.urandom(12).hex()}"


@dataclass(frozen=True)
class StoredFile:
    id: str
    purpose: str
    filename: str
    bytes: int
    created_at: float
    in_dir: bool

    def object(self) -> dict[str, Any]:
        """OpenAI's File object."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": int(self.created_at),
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }


def _not_found(file_id: str) -> NotFound:
    return NotFound(f"No such File object: {file_id}", param="file_id")


_COLUMNS = (files.c.id, files.c.purpose, files.c.filename, files.c.bytes, files.c.created_at, files.c.in_dir)


class FileWriter:
    """One file being written: `write` as bytes come, `close` when they end (or `abort`)."""

    def __init__(self, store: FileStore, file_id: str) -> None:
        self.store, self.id = store, file_id
        self.size = 0
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._seq = 0

    async def write(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_size += len(data)
        self.size += len(data)
        if self._pending_size >= CHUNK_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending, self._pending_size = [], 0
        await self.store.put_chunk(self.id, self._seq, data)
        self._seq += 1

    async def close(self, purpose: str, filename: str) -> StoredFile:
        await self._flush()
        return await self.store.finish(self.id, purpose, filename, self.size)

    async def abort(self) -> None:
        await self.store.remove(self.id)


class FileStore:
    def __init__(self, database: Database, settings: BatchSettings, clock: Callable[[], float] = time.time) -> None:
        self.db, self.clock = database, clock
        self.directory: Path | None = settings.files_dir.expanduser() if settings.files_dir else None

    async def open(self, owner: str) -> FileWriter:
        """A new file, not listed until its writer closes."""
        file_id = new_file_id()
        async with self.db.transaction("file_open") as conn:
            await conn.execute(
                files.insert().values(
                    id=file_id,
                    owner=owner,
                    purpose="",
                    filename="",
                    bytes=0,
                    status="uploading",
                    in_dir=self.directory is not None,
                    created_at=self.clock(),
                )
            )
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._path(file_id).write_bytes(b"")
        return FileWriter(self, file_id)

    def _path(self, file_id: str) -> Path:
        assert self.directory is not None
        return self.directory / file_id

    async def put_chunk(self, file_id: str, seq: int, data: bytes) -> None:
        if self.directory is not None:
            with self._path(file_id).open("ab") as out:
                out.write(data)
            return
        async with self.db.transaction("file_chunk") as conn:
            await conn.execute(file_chunks.insert().values(file_id=file_id, seq=seq, data=data))

    async def finish(self, file_id: str, purpose: str, filename: str, size: int) -> StoredFile:
        async with self.db.transaction("file_finish") as conn:
            await conn.execute(
                files.update()
                .where(files.c.id == file_id)
                .values(purpose=purpose, filename=filename, bytes=size, status="processed")
            )
            row = (await conn.execute(sa.select(*_COLUMNS).where(files.c.id == file_id))).one()
        return StoredFile(*row)

    async def get(self, owner: str, file_id: str) -> StoredFile:
        async with self.db.transaction("file_get") as conn:
            row = (
                await conn.execute(
                    sa.select(*_COLUMNS).where(
                        files.c.id == file_id, files.c.owner == owner, files.c.status == "processed"
                    )
                )
            ).first()
        if row is None:
            raise _not_found(file_id)
        return StoredFile(*row)

    async def page(
        self, owner: str, limit: int, after: str | None, order: str, purpose: str | None
    ) -> tuple[list[StoredFile], bool]:
        """A page of the owner's files, newest first (order desc) or oldest first, after the file `after`."""
        query = sa.select(*_COLUMNS).where(files.c.owner == owner, files.c.status == "processed")
        if purpose is not None:
            query = query.where(files.c.purpose == purpose)
        descending = order == "desc"
        keys = (files.c.created_at.desc(), files.c.id.desc()) if descending else (files.c.created_at, files.c.id)
        async with self.db.transaction("file_list") as conn:
            if after is not None:
                later = await after_row(conn, files, owner, after, descending)
                if later is None:
                    raise _not_found(after)
                query = query.where(later)
            rows = (await conn.execute(query.order_by(*keys).limit(limit + 1))).all()
        return [StoredFile(*row) for row in rows[:limit]], len(rows) > limit

    async def content(self, owner: str, file_id: str) -> AsyncIterator[bytes]:
        """The file's bytes, chunk by chunk (each chunk read in its own short transaction)."""
        stored = await self.get(owner, file_id)
        return self.chunks(stored)

    async def chunks(self, stored: StoredFile) -> AsyncIterator[bytes]:
        if stored.in_dir:
            with self._path(stored.id).open("rb") as source:
                while data := source.read(CHUNK_BYTES):
                    yield data
            return
        seq = 0
        while True:
            async with self.db.transaction("file_read") as conn:
                row = (
                    await conn.execute(
                        sa.select(file_chunks.c.data).where(
                            file_chunks.c.file_id == stored.id, file_chunks.c.seq == seq
                        )
                    )
                ).first()
            if row is None:
                return
            yield bytes(row[0])
            seq += 1

    async def write_in(
        self, conn: AsyncConnection, owner: str, filename: str, lines: AsyncIterator[bytes]
    ) -> str | None:
        """A batch_output file (a batch's output or error file) written in the caller's transaction, chunk by
        chunk as its lines come; None, and nothing written, when there are none."""
        file_id = new_file_id()
        size, seq, pending = 0, 0, bytearray()
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        async for line in lines:
            pending += line
            size += len(line)
            if len(pending) >= CHUNK_BYTES:
                await self._put_in(conn, file_id, seq, bytes(pending))
                seq, pending = seq + 1, bytearray()
        if not size:
            return None
        if pending:
            await self._put_in(conn, file_id, seq, bytes(pending))
        await conn.execute(
            files.insert().values(
                id=file_id,
                owner=owner,
                purpose="batch_output",
                filename=filename,
                bytes=size,
                status="processed",
                in_dir=self.directory is not None,
                created_at=self.clock(),
            )
        )
        return file_id

    async def _put_in(self, conn: AsyncConnection, file_id: str, seq: int, data: bytes) -> None:
        if self.directory is not None:
            with self._path(file_id).open("ab") as out:
                out.write(data)
        else:
            await conn.execute(file_chunks.insert().values(file_id=file_id, seq=seq, data=data))

    async def delete(self, owner: str, file_id: str) -> None:
        await self.get(owner, file_id)
        await self.remove(file_id)

    async def remove(self, file_id: str) -> None:
        async with self.db.transaction("file_delete") as conn:
            result = await conn.execute(files.delete().where(files.c.id == file_id).returning(files.c.in_dir))
            in_dir = result.scalar()
            await conn.execute(file_chunks.delete().where(file_chunks.c.file_id == file_id))
        if in_dir and self.directory is not None:
            self._path(file_id).unlink(missing_ok=True)
