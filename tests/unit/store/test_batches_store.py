"""Batch lines on a real SQLite store: claims never overlap, a lease that ran out is claimed again, a result is
written once, a line handed back waits its turn, and the files are written with the final status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import pytest_asyncio

from gateway.observability.metrics import Metrics
from gateway.settings import BatchSettings, Settings
from gateway.store import build_store
from gateway.store.batches import BatchStore, NewLine
from gateway.store.files import FileStore
from tests.unit.store.test_responses_store import Clock


@pytest_asyncio.fixture(loop_scope="function")
async def stores(tmp_path: Path) -> AsyncIterator[tuple[BatchStore, Clock]]:
    responses = build_store(Settings(models=[], data_dir=tmp_path), Metrics())
    await responses.start()
    clock = Clock()
    files = FileStore(responses.db, BatchSettings(), clock)
    yield BatchStore(responses.db, files, clock), clock
    await responses.close()


async def started(store: BatchStore, lines: int) -> str:
    batch = await store.create("owner", "file-x", "/v1/chat/completions", 3600, "24h", None)
    new = [NewLine(i, f"c{i}", {"n": i}) for i in range(1, lines + 1)]
    assert await store.start(batch["id"], new) and not await store.start(batch["id"], new)
    return str(batch["id"])


def result(custom_id: str, by: str) -> dict[str, object]:
    return {"custom_id": custom_id, "by": by}


async def test_concurrent_claims_never_share_a_line(stores: tuple[BatchStore, Clock]) -> None:
    store, _ = stores
    batch_id = await started(store, 50)
    claims = await asyncio.gather(*(store.claim(batch_id, f"w{i}", 10, 30, 100) for i in range(5)))
    lines = [line.line for claim in claims for line in claim]
    assert sorted(lines) == list(range(1, 51))
    assert await store.claim(batch_id, "late", 10, 30, 100) == []


async def test_a_batch_runs_no_more_lines_at_once_than_its_limit(stores: tuple[BatchStore, Clock]) -> None:
    store, _ = stores
    batch_id = await started(store, 10)
    first = await store.claim(batch_id, "one", 10, 30, 3)
    assert len(first) == 3 and await store.claim(batch_id, "two", 10, 30, 3) == []
    assert await store.record(first[0], "output", result("c1", "one"))
    assert [line.line for line in await store.claim(batch_id, "two", 10, 30, 3)] == [4]


async def test_a_lapsed_lease_is_claimed_again_and_the_result_is_written_once(
    stores: tuple[BatchStore, Clock],
) -> None:
    store, clock = stores
    batch_id = await started(store, 2)
    first = await store.claim(batch_id, "dead", 2, 30, 100)
    clock.now += 10
    await store.renew("dead", [(batch_id, 1)])  # line 1 is renewed, line 2 is not
    clock.now += 25
    again = await store.claim(batch_id, "alive", 2, 30, 100)
    assert [line.line for line in again] == [2]
    assert await store.record(again[0], "output", result("c2", "alive"))
    assert not await store.record(first[1], "output", result("c2", "dead"))  # the first write stands
    assert await store.record(first[0], "output", result("c1", "dead"))
    assert await store.to_finish(30) == [(batch_id, "completed")]
    assert await store.mark_finalizing(batch_id) and await store.finish(batch_id, "completed")
    assert not await store.finish(batch_id, "completed")
    batch = await store.get("owner", batch_id)
    assert batch["status"] == "completed" and batch["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    stored = await store.files.get("owner", batch["output_file_id"])
    content = b"".join([chunk async for chunk in store.files.chunks(stored)])
    assert [orjson.loads(line)["by"] for line in content.splitlines()] == ["dead", "alive"]


async def test_a_line_handed_back_waits_for_its_retry(stores: tuple[BatchStore, Clock]) -> None:
    store, clock = stores
    batch_id = await started(store, 1)
    (line,) = await store.claim(batch_id, "w", 1, 30, 100)
    await store.release(line, "w", 5)
    assert await store.claim(batch_id, "w", 1, 30, 100) == []
    clock.now += 6
    assert [again.line for again in await store.claim(batch_id, "w", 1, 30, 100)] == [1]


@pytest.mark.parametrize("final", ["expired", "cancelled"])
async def test_undone_lines_end_in_the_error_file(stores: tuple[BatchStore, Clock], final: str) -> None:
    store, clock = stores
    batch_id = await started(store, 3)
    (line,) = await store.claim(batch_id, "w", 1, 30, 100)
    assert await store.record(line, "output", result("c1", "w"))
    if final == "cancelled":
        await store.cancel("owner", batch_id)
    else:
        clock.now += 3601
    assert await store.to_finish(30) == [(batch_id, final)]
    assert await store.finish(batch_id, final)
    batch = await store.get("owner", batch_id)
    assert batch["status"] == final and batch["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
    stored = await store.files.get("owner", batch["error_file_id"])
    errors = [orjson.loads(line) async for chunk in store.files.chunks(stored) for line in chunk.splitlines()]
    assert {e["custom_id"] for e in errors} == {"c2", "c3"}
    assert {e["error"]["code"] for e in errors} == {f"batch_{final}"}
