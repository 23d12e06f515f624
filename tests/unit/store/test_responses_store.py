"""The response store on a real SQLite file: migrations taken in turn, owners, continuations, cancels,
events, staleness and purge."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway.errors import InvalidRequest, NotFound, StoreUnavailable
from gateway.observability.metrics import Metrics
from gateway.settings import Settings, StoreSettings
from gateway.store import ResponseStore, build_store
from gateway.store.migrate import head


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make_store(data_dir: Path, clock: Clock | None = None, **store: object) -> ResponseStore:
    settings = Settings(models=[], data_dir=data_dir, store=StoreSettings(**store))  # type: ignore[arg-type]
    built = build_store(settings, Metrics())
    if clock is not None:
        built.clock = clock
    return built


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ResponseStore]:
    built = make_store(tmp_path, Clock(), heartbeat_s=3600)
    await built.start()
    yield built
    await built.close()


def body(response_id: str, status: str = "completed", previous: str | None = None) -> dict[str, object]:
    output = [{"type": "message", "id": f"msg_{response_id}", "content": [{"type": "output_text", "text": "a"}]}]
    return {"id": response_id, "status": status, "previous_response_id": previous, "output": output}


async def test_replicas_starting_together_migrate_once(tmp_path: Path) -> None:
    stores = [make_store(tmp_path, heartbeat_s=3600) for _ in range(4)]
    await asyncio.gather(*(s.start() for s in stores))
    async with stores[0].db.transaction("check") as conn:
        versions = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).all()
    assert versions == [(head(),)] and all(s.migrated for s in stores)
    for s in stores:
        await s.close()


async def test_a_response_belongs_to_its_owner(store: ResponseStore) -> None:
    await store.create("alice", body("resp_a"), [{"id": "msg_in", "type": "message"}], background=False, streamed=False)
    found = await store.get("alice", "resp_a")
    assert found.body["id"] == "resp_a" and found.input_items == [{"id": "msg_in", "type": "message"}]
    with pytest.raises(NotFound):
        await store.get("bob", "resp_a")
    with pytest.raises(NotFound):
        await store.delete("bob", "resp_a")
    await store.delete("alice", "resp_a")
    with pytest.raises(NotFound):
        await store.get("alice", "resp_a")


async def test_history_walks_the_chain_oldest_first(store: ResponseStore) -> None:
    await store.create("o", body("resp_1"), [{"id": "in_1"}], background=False, streamed=False)
    await store.create("o", body("resp_2", previous="resp_1"), [{"id": "in_2"}], background=False, streamed=False)
    items = await store.history("o", "resp_2")
    assert [item["id"] for item in items] == ["in_1", "msg_resp_1", "in_2", "msg_resp_2"]
    with pytest.raises(NotFound):
        await store.history("other", "resp_2")
    await store.create("o", body("resp_3", "in_progress"), [], background=True, streamed=False)
    with pytest.raises(InvalidRequest):
        await store.history("o", "resp_3")


async def test_cancel_stands_against_the_runners_last_write(store: ResponseStore) -> None:
    stopped: list[str] = []
    await store.create("o", body("resp_bg", "in_progress"), [], background=True, streamed=False)
    store.running["resp_bg"] = lambda: stopped.append("resp_bg")
    cancelled = await store.cancel("o", "resp_bg")
    assert cancelled.status == "cancelled" and stopped == ["resp_bg"]
    assert await store.save(body("resp_bg", "completed")) is False
    assert (await store.get("o", "resp_bg")).status == "cancelled"
    await store.create("o", body("resp_fg"), [], background=False, streamed=False)
    with pytest.raises(InvalidRequest):
        await store.cancel("o", "resp_fg")


async def test_events_are_read_after_a_sequence_number(store: ResponseStore) -> None:
    await store.append_events("resp_e", [(0, "a"), (1, "b"), (2, "c")])
    assert await store.events_after("resp_e", 0) == [(1, "b"), (2, "c")]
    assert await store.events_after("resp_e", -1) == [(0, "a"), (1, "b"), (2, "c")]


async def test_stale_runs_fail_and_expired_responses_are_purged(tmp_path: Path) -> None:
    clock = Clock()
    store = make_store(tmp_path, clock, heartbeat_s=3600, stale_after_s=30, retention_days=1)
    await store.start()
    await store.create("o", body("resp_dead", "in_progress"), [], background=True, streamed=False)
    await store.create("o", body("resp_alive", "in_progress"), [], background=True, streamed=False)
    store.running["resp_alive"] = lambda: None
    clock.now += 60
    await store._heartbeat()
    await store._fail_stale()
    dead = await store.get("o", "resp_dead")
    assert dead.status == "failed" and dead.body["error"]["code"] == "server_error"
    assert (await store.get("o", "resp_alive")).status == "in_progress"
    await store.append_events("resp_dead", [(0, "x")])
    clock.now += 86400
    await store._purge()
    with pytest.raises(NotFound):
        await store.get("o", "resp_dead")
    assert await store.events_after("resp_dead", -1) == []
    await store.close()


async def test_an_unreachable_database_is_a_503(tmp_path: Path) -> None:
    store = make_store(tmp_path, url="postgresql://u:secret-pw@127.0.0.1:1/none", timeout_s=2, heartbeat_s=3600)
    await store.start()  # starts anyway: store: false still serves
    assert not store.migrated
    with pytest.raises(StoreUnavailable) as refused:
        await store.get("o", "resp_x")
    assert "secret-pw" not in str(refused.value.message)
    await store.close()
