"""Stored responses in a real PostgreSQL shared by two real router processes: replicas that start together
migrate once, a response stored through one router is retrieved and continued through the other, a
background response is cancelled through the other router, one whose router is killed mid-run is marked
failed by the other, and PostgreSQL stopped mid-run (store: true
answers 503 with Retry-After, store: false keeps working) and started again."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from gateway.store.migrate import head
from tests.faults.harness import MODEL, Engine, Fleet, Router
from tests.support.postgres_server import PASSWORD, PostgresServer, postgres_server  # noqa: F401  (the fixture)
from tests.support.waiting import wait_until

ALICE, BOB = "sk-alice-responses-0123", "sk-bob-responses-0123"


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def store_router(workdir: Path, upstreams: list[str], store_url: str) -> Router:
    config = {
        "api_keys": [{"key": ALICE, "name": "alice"}, {"key": BOB, "name": "bob"}],
        "store": {"url": store_url, "heartbeat_s": 0.2, "stale_after_s": 2, "timeout_s": 2},
    }
    return Router(workdir, upstreams, config=config)


def two_routers(fleet: Fleet, pg: PostgresServer, tokens: int = 4, delay_ms: float = 1) -> list[Router]:
    engine = Engine(fleet.workdir, tokens=tokens, delay_ms=delay_ms).start()
    fleet.engines.append(engine)
    routers = [store_router(fleet.workdir, [engine.url], pg.url) for _ in range(2)]
    fleet.routers += routers
    for router in routers:  # together: both migrate the fresh database at once
        router.start()
    engine.wait_ready()
    for router in routers:
        router.wait_ready()
    return routers


async def schema_versions(pg: PostgresServer) -> list[str]:
    conn = await asyncpg.connect(pg.url)
    try:
        return [row[0] for row in await conn.fetch("SELECT version_num FROM alembic_version")]
    finally:
        await conn.close()


def create(router: Router, key: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{router.url}/v1/responses", json={"model": MODEL, **body}, headers=auth(key), timeout=30)


def test_a_response_stored_through_one_router_is_continued_through_the_other(
    fleet: Fleet,
    postgres_server: PostgresServer,  # noqa: F811  (the fixture)
) -> None:
    one, two = two_routers(fleet, postgres_server)
    assert asyncio.run(schema_versions(postgres_server)) == [head()]  # migrated once, to the newest revision
    first = create(one, ALICE, input="one two three four", max_output_tokens=4)
    assert first.status_code == 200, first.text
    stored = httpx.get(f"{two.url}/v1/responses/{first.json()['id']}", headers=auth(ALICE), timeout=10)
    assert stored.status_code == 200 and stored.json() == first.json()
    second = create(two, ALICE, input="five", previous_response_id=first.json()["id"], max_output_tokens=4)
    assert second.status_code == 200, second.text
    # The scripted instance counts the prompt's words: the first turn and its answer are in the second prompt.
    assert second.json()["usage"]["input_tokens"] > first.json()["usage"]["input_tokens"] + 1
    listed = httpx.get(f"{one.url}/v1/responses/{second.json()['id']}/input_items", headers=auth(ALICE), timeout=10)
    assert [item["content"][0]["text"] for item in listed.json()["data"]] == ["five"]
    for router in (one, two):
        other = httpx.get(f"{router.url}/v1/responses/{first.json()['id']}", headers=auth(BOB), timeout=10)
        assert other.status_code == 404
    across = create(two, BOB, input="x", previous_response_id=first.json()["id"])
    assert across.status_code == 404
    for log in (one.log_path, two.log_path):
        assert PASSWORD not in log.read_text()


def test_a_background_response_is_cancelled_through_the_other_router(
    fleet: Fleet,
    postgres_server: PostgresServer,  # noqa: F811  (the fixture)
) -> None:
    one, two = two_routers(fleet, postgres_server, tokens=2000, delay_ms=20)
    queued = create(one, ALICE, input="long", background=True)
    assert queued.status_code == 200 and queued.json()["status"] == "queued"
    response_id = queued.json()["id"]
    url = f"{two.url}/v1/responses/{response_id}"
    wait_until(lambda: httpx.get(url, headers=auth(ALICE)).json()["status"] == "in_progress", 20, "in progress")
    cancelled = httpx.post(f"{url}/cancel", headers=auth(ALICE), timeout=10)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    # Router one reads the cancel at its next heartbeat and stops the instance's request.
    stats = fleet.engines[0].stats
    wait_until(lambda: stats().get("in_flight", 0) == 0, 10, "the cancelled run stops upstream")
    assert stats()["aborted"] == 1 and stats()["completed"] == 0
    assert httpx.get(url, headers=auth(ALICE)).json()["status"] == "cancelled"  # the run's end left it so


def test_postgres_stopped_mid_run_and_started_again(
    fleet: Fleet,
    postgres_server: PostgresServer,  # noqa: F811  (the fixture)
) -> None:
    one, two = two_routers(fleet, postgres_server)
    kept = create(one, ALICE, input="kept across the outage", max_output_tokens=4)
    assert kept.status_code == 200
    postgres_server.stop("immediate")
    for router in (one, two):
        refused = create(router, ALICE, input="x", max_output_tokens=4)
        assert refused.status_code == 503 and refused.headers["retry-after"], refused.text
        assert refused.json()["error"]["code"] == "store_unavailable" and PASSWORD not in refused.text
        served = create(router, ALICE, input="x", max_output_tokens=4, store=False)
        assert served.status_code == 200 and served.json()["store"] is False
    postgres_server.start()
    wait_until(lambda: create(two, ALICE, input="y", max_output_tokens=4).status_code == 200, 30, "store back")
    again = httpx.get(f"{two.url}/v1/responses/{kept.json()['id']}", headers=auth(ALICE), timeout=10)
    assert again.status_code == 200 and again.json() == kept.json()


def test_a_response_whose_router_dies_mid_run_is_failed_not_missing(
    fleet: Fleet,
    postgres_server: PostgresServer,  # noqa: F811  (the fixture)
) -> None:
    one, two = two_routers(fleet, postgres_server, tokens=2000, delay_ms=20)
    queued = create(one, ALICE, input="long", background=True)
    url = f"{two.url}/v1/responses/{queued.json()['id']}"
    wait_until(lambda: httpx.get(url, headers=auth(ALICE)).json()["status"] == "in_progress", 20, "in progress")
    assert one.proc is not None
    one.proc.send_signal(signal.SIGKILL)  # no goodbye: nothing of router one writes the response's end
    one.proc.wait()
    one.proc = None
    wait_until(lambda: httpx.get(url, headers=auth(ALICE)).json()["status"] == "failed", 20, "marked failed")
    failed = httpx.get(url, headers=auth(ALICE)).json()
    assert failed["error"]["code"] == "server_error" and failed["id"] == queued.json()["id"]
