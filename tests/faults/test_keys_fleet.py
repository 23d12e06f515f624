"""Keys minted through the keys API, shared by two real router processes through a real PostgreSQL: a key
created on one router works on the other within the refresh bound, a revoked key is refused on both within
it, and with PostgreSQL stopped the keys read before keep working for keys_stale_after_s, then are refused,
while an unknown key is refused throughout. Read with the openai SDK (its AuthenticationError for 401)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import openai

from gateway.store.migrate import head
from tests.faults.harness import MODEL, Engine, Fleet, Router
from tests.faults.test_responses_store import schema_versions
from tests.support.postgres_server import PostgresServer, postgres_server  # noqa: F401  (the fixture)
from tests.support.waiting import wait_until

ADMIN = "sk-admin-fleet-keys-0123"
REFRESH_S, STALE_S, STORE_TIMEOUT_S = 0.5, 4.0, 1.0
BOUND_S = REFRESH_S + STORE_TIMEOUT_S + 1.0  # the documented bound, and room for a busy machine


def keys_router(workdir: Path, upstreams: list[str], store_url: str) -> Router:
    config = {
        "auth": {"admin_key": ADMIN, "keys_refresh_s": REFRESH_S, "keys_stale_after_s": STALE_S},
        "store": {"url": store_url, "timeout_s": STORE_TIMEOUT_S},
    }
    return Router(workdir, upstreams, log_level="info", config=config)


def _admin(router: Router, method: str, path: str, **body: Any) -> dict[str, Any]:
    answer = httpx.request(
        method, f"{router.url}/admin/keys{path}", json=body or None, headers={"authorization": f"Bearer {ADMIN}"}
    )
    assert answer.status_code in (200, 201), answer.text
    result: dict[str, Any] = answer.json()
    return result


def _serves(router: Router, key: str) -> bool:
    """True when the key is served; False when refused with the SDK's AuthenticationError (401)."""
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key=key, max_retries=0, timeout=10)
    try:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    except openai.AuthenticationError:
        return False
    return True


def _within_bound(check: Any, what: str, bound_s: float = BOUND_S) -> None:
    started = time.monotonic()
    wait_until(check, bound_s, what)
    assert time.monotonic() - started <= bound_s


def test_keys_minted_on_one_router_work_and_are_revoked_on_both(
    fleet: Fleet,
    postgres_server: PostgresServer,  # noqa: F811  (the fixture)
) -> None:
    engine = Engine(fleet.workdir, tokens=2, delay_ms=1).start()
    fleet.engines.append(engine)
    one, two = routers = [keys_router(fleet.workdir, [engine.url], postgres_server.url) for _ in range(2)]
    fleet.routers += routers
    for router in routers:
        router.start()
    engine.wait_ready()
    for router in routers:
        router.wait_ready()
    assert asyncio.run(schema_versions(postgres_server)) == [head()]

    key = _admin(one, "POST", "", name="team-a", models=[MODEL])
    secret = key["value"]
    assert _serves(one, secret)  # the replica that made it: at once
    _within_bound(lambda: _serves(two, secret), "the key minted on one router works on the other")
    assert _admin(two, "GET", f"/{key['id']}")["name"] == "team-a"

    _admin(one, "DELETE", f"/{key['id']}")
    assert not _serves(one, secret)
    _within_bound(lambda: not _serves(two, secret), "the key revoked on one router is refused on the other")

    kept = _admin(two, "POST", "", name="team-b")["value"]
    _within_bound(lambda: _serves(one, kept), "a second key reaches the first router")
    postgres_server.stop("immediate")
    down_at = time.monotonic()
    assert _serves(one, kept) and _serves(two, kept)  # the keys read before keep working
    assert not _serves(one, "sk-ty-never-minted-0123456789")  # an unknown key is refused: nothing fails open
    _within_bound(lambda: not _serves(one, kept), "a stale key is refused", STALE_S + BOUND_S)
    assert time.monotonic() - down_at >= STALE_S - BOUND_S  # not before the stale bound
    postgres_server.start()
    _within_bound(lambda: _serves(one, kept), "the key works again once the store is back", BOUND_S + 5)

    log = one.log_path.read_text()
    assert '"action": "revoke"' in log or '"action":"revoke"' in log
    assert secret not in log and kept not in log and secret not in two.log_path.read_text()
