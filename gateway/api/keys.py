"""The keys API: mint, list, read, change, revoke and rotate client keys, behind an admin key (auth.admin_key,
or a client key whose scope grants `admin`). Keys live in the SQL store, hashed (gateway.store.keys); the
secret is answered once, on create and rotate. Every change is one audit log line: who, what, which key;
never the secret.

    POST   /admin/keys                 create: {name, owner, models, groups, expires_at, ...} -> the key + value
    GET    /admin/keys                 list (revoked keys too, marked revoked_at)
    GET    /admin/keys/{id}            one key
    POST   /admin/keys/{id}            update the fields sent (null clears one)
    DELETE /admin/keys/{id}            revoke
    POST   /admin/keys/{id}/rotate     a new secret for the same key; the old one stops working
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.common import app_state, json_response, require_admin
from gateway.errors import InvalidRequest
from gateway.observability.logging import FIELDS_ATTR
from gateway.protocol.keys import KeyCreate, KeyDeleted, KeyList, KeyObject, KeyUpdate
from gateway.scopes import DEFAULT_GROUPS
from gateway.store.keys import KeySync

router = APIRouter(prefix="/admin/keys", include_in_schema=False)
audit = logging.getLogger("tokenyard.audit")


def _sync(request: Request) -> tuple[KeySync, str]:
    actor = require_admin(request)
    sync = app_state(request).key_sync
    assert sync is not None, "create_app builds the key sync"
    return sync, actor


def _audit(action: str, actor: str, row: dict[str, Any], changed: list[str] | None = None) -> None:
    fields = {"action": action, "actor": actor, "key_id": row["id"], "key_name": row["name"]}
    audit.info("api key %s", action, extra={FIELDS_ATTR: {**fields, "changed": sorted(changed or [])}})


def _whole(value: float | None) -> int | None:
    return None if value is None else int(value)


def _object(row: dict[str, Any], value: str | None = None) -> KeyObject:
    scope = row["scope"]
    groups = scope.get("groups")
    return KeyObject(
        id=row["id"],
        name=row["name"],
        redacted_value=row["redacted"],
        owner=row["owner"],
        models=scope.get("models"),
        groups=sorted(groups if groups is not None else DEFAULT_GROUPS),
        expires_at=_whole(scope.get("expires_at")),
        max_priority=scope.get("max_priority"),
        weight=scope.get("weight") or 1,
        metadata=scope.get("metadata") or {},
        limits=row["limits"],
        created_at=int(row["created_at"]),
        updated_at=int(row["updated_at"]),
        revoked_at=_whole(row["revoked_at"]),
        created_by=row["created_by"],
        value=value,
    )


def _free_name(request: Request, name: str | None) -> None:
    keys = app_state(request).keys
    if name is not None and keys is not None and name in keys.configured_names():
        raise InvalidRequest(f"An API key named '{name}' exists already.", param="name")


@router.post("")
async def create_key(body: KeyCreate, request: Request) -> Response:
    sync, actor = _sync(request)
    _free_name(request, body.name)
    row, secret = await sync.records.create(body.name, body.model_dump(exclude={"name"}), actor)
    _audit("create", actor, row, list(body.model_fields_set))
    await sync.refresh()  # this replica at once; the others within auth.keys_refresh_s
    return json_response(_object(row, secret), 201)


@router.get("")
async def list_keys(request: Request) -> Response:
    sync, _ = _sync(request)
    return json_response(KeyList(data=[_object(row) for row in await sync.records.all()]))


@router.get("/{key_id}")
async def get_key(key_id: str, request: Request) -> Response:
    sync, _ = _sync(request)
    return json_response(_object(await sync.records.get(key_id)))


@router.post("/{key_id}")
async def update_key(key_id: str, body: KeyUpdate, request: Request) -> Response:
    sync, actor = _sync(request)
    _free_name(request, body.name)
    changes = body.model_dump(include=body.model_fields_set)
    row = await sync.records.update(key_id, changes)
    _audit("update", actor, row, list(changes))
    await sync.refresh()
    return json_response(_object(row))


@router.delete("/{key_id}")
async def revoke_key(key_id: str, request: Request) -> Response:
    sync, actor = _sync(request)
    row = await sync.records.revoke(key_id)
    _audit("revoke", actor, row)
    await sync.refresh()
    return json_response(KeyDeleted(id=key_id))


@router.post("/{key_id}/rotate")
async def rotate_key(key_id: str, request: Request) -> Response:
    sync, actor = _sync(request)
    row, secret = await sync.records.rotate(key_id)
    _audit("rotate", actor, row)
    await sync.refresh()
    return json_response(_object(row, secret))
