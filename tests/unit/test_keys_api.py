"""The keys API over the app and a real SQLite store: create (the secret once), list, get, update, rotate,
revoke; only an admin key; one audit line per change, never with the secret."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pytest

from gateway.keys import KeyStore
from gateway.store.keys import entry_of
from tests.support.scripted_app import MODEL, chat, scripted_client, settings

ADMIN = "sk-admin-keys-api-0123"


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def test_a_key_is_minted_used_changed_rotated_and_revoked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tokenyard.audit")
    async with scripted_client(settings(data_dir=tmp_path, auth={"admin_key": ADMIN})) as client:
        assert (await client.post("/v1/chat/completions", json=chat())).status_code == 200  # no key yet: open
        assert (await client.post("/admin/keys", json={"name": "team-a"})).status_code == 401
        body = {"name": "team-a", "owner": "search", "models": [MODEL], "groups": ["inference"], "weight": 2}
        created = await client.post("/admin/keys", json=body, headers=_auth(ADMIN))
        assert created.status_code == 201, created.text
        key = created.json()
        secret, key_id = key["value"], key["id"]
        assert secret.startswith("sk-ty-") and key["redacted_value"].endswith(secret[-4:])
        assert (key["owner"], key["models"], key["groups"], key["weight"]) == ("search", [MODEL], ["inference"], 2)
        assert key["created_by"] == "admin_key" and key["revoked_at"] is None

        assert (await client.post("/v1/chat/completions", json=chat())).status_code == 401  # a key minted: closed
        assert (await client.post("/v1/chat/completions", json=chat(), headers=_auth(secret))).status_code == 200
        assert (await client.get("/v1/usage", headers=_auth(secret))).status_code == 403  # groups: inference

        listed = (await client.get("/admin/keys", headers=_auth(ADMIN))).json()["data"]
        assert [entry["id"] for entry in listed] == [key_id] and listed[0]["value"] is None
        assert secret not in str(listed)
        assert (await client.get(f"/admin/keys/{key_id}", headers=_auth(ADMIN))).json()["name"] == "team-a"
        missing = await client.get("/admin/keys/key_nope", headers=_auth(ADMIN))
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "key_id"

        changed = await client.post(f"/admin/keys/{key_id}", json={"models": ["other*"]}, headers=_auth(ADMIN))
        assert changed.status_code == 200 and changed.json()["models"] == ["other*"]
        assert changed.json()["weight"] == 2  # fields not sent stay
        hidden = await client.post("/v1/chat/completions", json=chat(), headers=_auth(secret))
        assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "model_not_found"
        await client.post(f"/admin/keys/{key_id}", json={"models": None}, headers=_auth(ADMIN))

        rotated = (await client.post(f"/admin/keys/{key_id}/rotate", headers=_auth(ADMIN))).json()
        assert rotated["id"] == key_id and rotated["value"] != secret
        assert (await client.post("/v1/chat/completions", json=chat(), headers=_auth(secret))).status_code == 401
        fresh = rotated["value"]
        assert (await client.post("/v1/chat/completions", json=chat(), headers=_auth(fresh))).status_code == 200

        revoked = await client.delete(f"/admin/keys/{key_id}", headers=_auth(ADMIN))
        assert revoked.json() == {"object": "api_key.deleted", "id": key_id, "deleted": True}
        assert (await client.post("/v1/chat/completions", json=chat(), headers=_auth(fresh))).status_code == 401
        assert (await client.post("/v1/chat/completions", json=chat())).status_code == 401  # still closed
        again = await client.post(f"/admin/keys/{key_id}", json={"weight": 1}, headers=_auth(ADMIN))
        assert again.status_code == 400
        listed = (await client.get("/admin/keys", headers=_auth(ADMIN))).json()["data"]
        assert listed[0]["revoked_at"] is not None

    actions = [
        (r.fields["action"], r.fields["key_name"], r.fields["actor"]) for r in caplog.records if hasattr(r, "fields")
    ]
    assert actions == [
        ("create", "team-a", "admin_key"),
        ("update", "team-a", "admin_key"),
        ("update", "team-a", "admin_key"),
        ("rotate", "team-a", "admin_key"),
        ("revoke", "team-a", "admin_key"),
    ]
    assert secret not in caplog.text and fresh not in caplog.text


async def test_only_an_admin_key_mints_and_names_are_unique(tmp_path: Path) -> None:
    config = settings(
        data_dir=tmp_path,
        api_keys=[
            {"key": "sk-ops-0123456789", "name": "ops", "groups": ["admin"]},
            {"key": "sk-user-012345", "name": "user"},
        ],
    )
    async with scripted_client(config) as client:
        ops, user = _auth("sk-ops-0123456789"), _auth("sk-user-012345")
        denied = await client.post("/admin/keys", json={"name": "x"}, headers=user)
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "permission_denied"
        assert (await client.post("/admin/keys", json={"name": "x"}, headers=_auth("sk-wrong"))).status_code == 401
        made = await client.post("/admin/keys", json={"name": "x", "expires_at": "2020-01-01T00:00:00Z"}, headers=ops)
        assert made.status_code == 201 and made.json()["created_by"] == "ops"
        expired = await client.post("/v1/chat/completions", json=chat(), headers=_auth(made.json()["value"]))
        assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
        for name in ("x", "user"):  # a minted key's name, a configured key's name
            clash = await client.post("/admin/keys", json={"name": name}, headers=ops)
            assert clash.status_code == 400 and clash.json()["error"]["param"] == "name"
        for bad in ({"name": "y", "groups": ["root"]}, {"name": "y", "rpm": 3}, {"name": "a b"}, {}):
            refused = await client.post("/admin/keys", json=bad, headers=ops)
            assert refused.status_code == 400, bad
        # A client key with the admin group reads every key's usage too (the admin view).
        assert (await client.get("/admin/usage", headers=ops)).status_code == 200


async def test_a_store_unreadable_at_start_keeps_a_server_with_an_admin_key_closed(tmp_path: Path) -> None:
    down = {"url": "postgresql://u:pw-4711@127.0.0.1:1/db", "timeout_s": 1}
    async with scripted_client(settings(data_dir=tmp_path, store=down, auth={"admin_key": ADMIN})) as client:
        refused = await client.post("/v1/chat/completions", json=chat())
        assert refused.status_code == 401  # keys may have been minted there: nothing fails open
        unavailable = await client.post("/admin/keys", json={"name": "x"}, headers=_auth(ADMIN))
        assert unavailable.status_code == 503 and "pw-4711" not in unavailable.text
    async with scripted_client(settings(data_dir=tmp_path, store=down)) as client:  # no admin key: none minted
        assert (await client.post("/v1/chat/completions", json=chat())).status_code == 200


def test_stored_keys_age_out_while_the_store_cannot_be_read() -> None:
    now = [100.0]
    keys = KeyStore([], None, clock=lambda: now[0], stale_after_s=30)
    assert not keys.enabled and keys.match("sk-ty-stored-0123") is None
    keys.replace_stored([entry_of(_row("stored", "sk-ty-stored-0123"))], minted=True)
    assert keys.enabled and keys.match("sk-ty-stored-0123") is not None
    now[0] += 30  # no read since: still within the bound
    assert keys.match("sk-ty-stored-0123") is not None and keys.match("sk-ty-other-0123") is None
    now[0] += 0.5
    assert keys.match("sk-ty-stored-0123") is None and keys.enabled  # refused, and auth stays on
    keys.replace_stored([entry_of(_row("stored", "sk-ty-stored-0123"))], minted=True)  # a good read again
    assert keys.match("sk-ty-stored-0123") is not None


def _row(name: str, secret: str) -> dict[str, Any]:
    return {
        "name": name,
        "digest": hashlib.sha256(secret.encode()).hexdigest(),
        "owner": None,
        "scope": {"models": None, "groups": None, "weight": 2},
        "limits": {},
    }
