"""Durable records: stored responses (and what joins them later), in SQLite or PostgreSQL through SQLAlchemy.

- `db`: the engine for a URL, and the one boundary where the database's failures become a 503;
- `migrate`: Alembic's migrations, run at start under the database's lock;
- `schema`: the tables; `migrations/`: their revisions;
- `responses`: the stored responses, their owners, liveness, cancels, events and purge;
- `files`: the Batch API's files, their bytes in chunks (or in a directory);
- `batches`: batches and their lines, claimed by the replicas' batch runners.
"""

from __future__ import annotations

from gateway.observability.metrics import Metrics
from gateway.settings import Settings
from gateway.store.db import Database, database_url
from gateway.store.responses import ResponseStore, StoredResponse

__all__ = ["ResponseStore", "StoredResponse", "build_store"]


def build_store(settings: Settings, metrics: Metrics) -> ResponseStore:
    """The store the settings name; nothing connects until it starts."""
    database = Database(database_url(settings), settings.store.timeout_s, metrics.observe_store)
    return ResponseStore(database, settings.store, metrics)
