"""The store's database: an async SQLAlchemy engine on SQLite (the default, a file in data_dir) or
PostgreSQL (a URL shared by router replicas), and the one boundary where its failures become a 503.

SQLite: pysqlite's own transaction handling is switched off, so that SQLAlchemy's transactions are the
database's (BEGIN ... COMMIT, WAL journal, a busy timeout so that writers wait for each other).
PostgreSQL: asyncpg, with connections checked before use so that a restarted server is reconnected to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway.errors import StoreUnavailable
from gateway.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path("~/.local/share/tokenyard")
SQLITE_FILE = "tokenyard.db"
# What a database that is down or unreachable raises, through SQLAlchemy or around it.
_DOWN = (SQLAlchemyError, OSError, TimeoutError, ConnectionError)


def database_url(settings: Settings) -> str:
    """The SQLAlchemy URL with its async driver: asyncpg for PostgreSQL, aiosqlite for SQLite."""
    if settings.store.url is None:
        data_dir = (settings.data_dir or DEFAULT_DATA_DIR).expanduser()
        data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{data_dir / SQLITE_FILE}"
    url = settings.store.url.get_secret_value()
    scheme, _, rest = url.partition("://")
    if scheme.startswith("sqlite"):
        return f"sqlite+aiosqlite://{rest}"
    return f"postgresql+asyncpg://{rest}"


def build_engine(url: str, timeout_s: float) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": timeout_s})
        _own_sqlite_transactions(engine)
        return engine
    return create_async_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
        connect_args={"timeout": timeout_s, "command_timeout": timeout_s},
    )


def _own_sqlite_transactions(engine: AsyncEngine) -> None:
    """SQLAlchemy's documented recipe: the driver leaves BEGIN to SQLAlchemy, so DDL is transactional and a
    write transaction (BEGIN IMMEDIATE) holds SQLite's write lock from its start."""

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


async def after_row(
    conn: AsyncConnection, table: sa.Table, owner: str, after: str, descending: bool
) -> sa.ColumnElement[bool] | None:
    """Keyset pagination on (created_at, id): the rows that come after the owner's row `after` in that order;
    None when there is no such row."""
    cursor = (
        await conn.execute(sa.select(table.c.created_at).where(table.c.id == after, table.c.owner == owner))
    ).first()
    if cursor is None:
        return None
    key, mark = sa.tuple_(table.c.created_at, table.c.id), sa.tuple_(sa.literal(cursor[0]), sa.literal(after))
    return key < mark if descending else key > mark


class Database:
    """The engine, and `transaction()`: one unit of work whose failure to reach the database is a 503."""

    def __init__(self, url: str, timeout_s: float, observe: Callable[[str, float, bool], None]) -> None:
        self.url, self.timeout_s = url, timeout_s
        self.engine = build_engine(url, timeout_s)
        self.dialect = "sqlite" if url.startswith("sqlite") else "postgresql"
        self._observe = observe  # (operation, seconds, failed): the store's metrics

    @contextlib.asynccontextmanager
    async def transaction(self, operation: str, timeout_s: float | None = None) -> AsyncIterator[AsyncConnection]:
        """`timeout_s`: this unit's own limit, for one that is long by nature (a batch's lines in or files out)."""
        started = time.perf_counter()
        failed = True
        try:
            async with asyncio.timeout(timeout_s or self.timeout_s), self.engine.begin() as conn:
                yield conn
            failed = False
        except _DOWN as exc:
            log.warning("store %s failed: %s", operation, type(exc).__name__)
            raise StoreUnavailable("The response store is unavailable; retry shortly.") from None
        finally:
            self._observe(operation, time.perf_counter() - started, failed)

    async def close(self) -> None:
        await self.engine.dispose()
