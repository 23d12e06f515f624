"""Client keys minted through the keys API (gateway.api.keys), kept in the SQL store as digests, and the loop
that copies them into each replica's KeyStore.

Each replica reads every key row every `auth.keys_refresh_s` (and at once after a change it made itself), so
a key created, changed or revoked through any replica is seen by every replica within that bound (plus one
store round trip). While the store cannot be read, the keys read before keep working for
`auth.keys_stale_after_s` after the last good read, then they are refused too; a key never read is refused
throughout (gateway.keys.KeyStore). Nothing here is on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from gateway.errors import GatewayError, InvalidRequest, NotFound
from gateway.keys import KeyEntry, KeyStore
from gateway.limit_store import KeyLimits
from gateway.scopes import DEFAULT_GROUPS, KeyScope
from gateway.store.db import Database
from gateway.store.schema import api_keys

log = logging.getLogger(__name__)

SECRET_PREFIX = "sk-ty-"
_SCOPE_FIELDS = ("models", "groups", "expires_at", "max_priority", "weight", "metadata")
_LIMIT_FIELDS = ("requests_per_minute", "tokens_per_minute", "tokens_per_day", "tokens_per_month")


def _not_found(key_id: str) -> NotFound:
    return NotFound(f"No API key found with id '{key_id}'.", param="key_id")


def _seconds(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    return None if value is None else float(value)


def _new_secret() -> tuple[str, str, str]:
    """(secret, its hex digest, its redacted form)."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    return secret, hashlib.sha256(secret.encode()).hexdigest(), f"{SECRET_PREFIX}...{secret[-4:]}"


def entry_of(row: dict[str, Any]) -> KeyEntry:
    scope, limits = row["scope"], row["limits"]
    groups = scope.get("groups")
    return KeyEntry(
        row["name"],
        bytes.fromhex(row["digest"]),
        KeyLimits(**{name: limits.get(name) for name in _LIMIT_FIELDS}),
        KeyScope(
            owner=row["owner"],
            models=tuple(scope["models"]) if scope.get("models") is not None else None,
            groups=frozenset(groups) if groups is not None else DEFAULT_GROUPS,
            expires_at=scope.get("expires_at"),
            max_priority=scope.get("max_priority"),
            weight=int(scope.get("weight") or 1),
            metadata=dict(scope.get("metadata") or {}),
        ),
    )


class KeyRecords:
    """The api_keys table. `ready` migrates the schema first (the response store's, shared)."""

    def __init__(self, db: Database, ready: Callable[[], Awaitable[None]], clock: Callable[[], float] = time.time):
        self.db, self._ready, self.clock = db, ready, clock

    async def create(self, name: str, fields: dict[str, Any], actor: str) -> tuple[dict[str, Any], str]:
        await self._ready()
        secret, digest, redacted = _new_secret()
        now = self.clock()
        row: dict[str, Any] = {
            "id": f"key_{uuid.uuid4().hex}",
            "name": name,
            "digest": digest,
            "redacted": redacted,
            "owner": fields.get("owner"),
            "scope": self._scope({}, fields),
            "limits": {name: fields.get(name) for name in _LIMIT_FIELDS},
            "created_at": now,
            "updated_at": now,
            "revoked_at": None,
            "created_by": actor,
        }
        await self._write("key_create", api_keys.insert().values(**row), name, row["id"])
        return row, secret

    async def all(self) -> list[dict[str, Any]]:
        await self._ready()
        async with self.db.transaction("key_list") as conn:
            rows = await conn.execute(sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id))
            return [dict(row._mapping) for row in rows]

    async def get(self, key_id: str) -> dict[str, Any]:
        await self._ready()
        async with self.db.transaction("key_get") as conn:
            row = (await conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id))).first()
        if row is None:
            raise _not_found(key_id)
        return dict(row._mapping)

    async def update(self, key_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Only the fields given change; a revoked key cannot be changed."""
        row = await self._live(key_id)
        values: dict[str, Any] = {"updated_at": self.clock()}
        if "name" in fields and fields["name"] is not None:
            values["name"] = fields["name"]
        if "owner" in fields:
            values["owner"] = fields["owner"]
        if any(name in fields for name in _SCOPE_FIELDS):
            values["scope"] = self._scope(row["scope"], fields)
        if any(name in fields for name in _LIMIT_FIELDS):
            values["limits"] = {name: fields.get(name, row["limits"].get(name)) for name in _LIMIT_FIELDS}
        statement = api_keys.update().where(api_keys.c.id == key_id).values(**values)
        await self._write("key_update", statement, values.get("name", row["name"]), key_id)
        return {**row, **values}

    async def revoke(self, key_id: str) -> dict[str, Any]:
        row = await self._live(key_id)
        now = self.clock()
        values = {"revoked_at": now, "updated_at": now}
        await self._write("key_revoke", api_keys.update().where(api_keys.c.id == key_id).values(**values))
        return {**row, **values}

    async def rotate(self, key_id: str) -> tuple[dict[str, Any], str]:
        """A new secret for the same key (id, name, scope, usage); the old secret stops working."""
        row = await self._live(key_id)
        secret, digest, redacted = _new_secret()
        values = {"digest": digest, "redacted": redacted, "updated_at": self.clock()}
        await self._write("key_rotate", api_keys.update().where(api_keys.c.id == key_id).values(**values))
        return {**row, **values}, secret

    async def entries(self) -> tuple[list[KeyEntry], bool]:
        """The keys that may be used (not revoked), and whether any key was ever minted here."""
        await self._ready()
        async with self.db.transaction("key_load") as conn:
            rows = [dict(row._mapping) for row in await conn.execute(sa.select(api_keys))]
        return [entry_of(row) for row in rows if row["revoked_at"] is None], bool(rows)

    async def _live(self, key_id: str) -> dict[str, Any]:
        row = await self.get(key_id)
        if row["revoked_at"] is not None:
            raise InvalidRequest(f"The API key '{key_id}' is revoked.", param="key_id")
        return row

    async def _write(self, operation: str, statement: Any, name: str | None = None, key_id: str = "") -> None:
        """One write; with `name`, refused (400) when another key has that name. Two replicas naming two keys
        alike in the same instant: the unique index refuses the second (503, as any store failure)."""
        async with self.db.transaction(operation) as conn:
            if name is not None:
                clash = sa.select(api_keys.c.id).where(api_keys.c.name == name, api_keys.c.id != key_id)
                if (await conn.execute(clash)).first() is not None:
                    raise InvalidRequest(f"An API key named '{name}' exists already.", param="name")
            await conn.execute(statement)

    @staticmethod
    def _scope(before: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        scope = {name: fields.get(name, before.get(name)) for name in _SCOPE_FIELDS}
        scope["expires_at"] = _seconds(scope["expires_at"])
        scope["weight"] = scope["weight"] or 1
        scope["metadata"] = scope["metadata"] or {}
        return scope


class KeySync:
    """Copies the stored keys into `keys` now and every `refresh_s`; started and stopped by the lifespan."""

    def __init__(self, records: KeyRecords, keys: KeyStore, refresh_s: float, admin_key_set: bool) -> None:
        self.records, self.keys, self.refresh_s, self.admin_key_set = records, keys, refresh_s, admin_key_set
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> bool:
        try:
            entries, minted = await self.records.entries()
        except GatewayError:
            return False  # logged by the transaction; the keys read before age out (KeyStore.stale_after_s)
        self.keys.replace_stored(entries, minted)
        return True

    async def start(self) -> None:
        """A store unreadable at start, where keys could have been minted (an admin key is configured), turns
        auth on until a read says otherwise: nothing fails open. Where none could, the server stays as open
        as its settings make it."""
        if not await self.refresh():
            if self._could_mint():
                self.keys.mark_unknown()
            log.warning("the key store is unavailable at start; keys minted through the API are refused until read")
        self._task = asyncio.create_task(self._loop())

    def _could_mint(self) -> bool:
        return self.admin_key_set or any(entry.scope.allows_group("admin") for entry in self.keys.entries())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.refresh()
