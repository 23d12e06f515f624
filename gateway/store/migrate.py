"""Schema migrations (Alembic), run at start under the database's own lock, so that replicas starting
together take turns: the first upgrades, the others find the schema at head and do nothing.

PostgreSQL: a transaction-scoped advisory lock, then the migrations in that same transaction (PostgreSQL's
DDL is transactional). SQLite: the transaction begins IMMEDIATE (gateway.store.db), which holds the
database's write lock until it commits.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory

from gateway.store.db import Database
from gateway.store.schema import metadata

MIGRATIONS = Path(__file__).parent / "migrations"
_ADVISORY_LOCK = 0x746F6B656E79  # "tokeny": the key every replica locks on


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head() -> str:
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


def _upgrade(connection: sa.Connection) -> None:
    config = _config()
    script = ScriptDirectory.from_config(config)
    with EnvironmentContext(
        config, script, fn=lambda revision, _context: script._upgrade_revs("head", revision)
    ) as environment:
        environment.configure(connection=connection, target_metadata=metadata, transactional_ddl=True)
        with environment.begin_transaction():
            environment.run_migrations()


async def migrate(database: Database) -> None:
    async with database.transaction("migrate") as conn:
        if database.dialect == "postgresql":
            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK})
        await conn.run_sync(_upgrade)
