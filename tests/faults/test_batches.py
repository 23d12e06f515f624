"""The Batch API through real processes: a 2,000-line batch over scripted instances, its router SIGKILLed twice
while the batch runs and started again on the same SQLite store; then, on a real PostgreSQL, two router
replicas sharing one batch while one of them is killed. Every custom_id ends exactly once in the output or
error file, a malformed line lands in the error file, and no line runs twice but those whose process was
killed before their result was stored."""

from __future__ import annotations

import io
import re
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson

from tests.faults.harness import MODEL, Engine, Fleet, Router
from tests.support.postgres_server import PostgresServer, postgres_server  # noqa: F401  (the fixture)
from tests.support.waiting import wait_until

KEY = "sk-batch-owner-0123456789"
LINES = 2000
CONCURRENCY = 16  # per router process
BATCH = {"poll_s": 0.05, "lease_s": 2.0, "retry_s": 0.1, "max_concurrency": CONCURRENCY}


def input_file() -> bytes:
    lines = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": f"n {i}"}], "max_tokens": 2},
        }
        for i in range(LINES - 1)
    ]
    malformed = {"custom_id": "malformed", "method": "GET", "url": "/v1/chat/completions", "body": {}}
    return b"".join(orjson.dumps(line) + b"\n" for line in [*lines[:700], malformed, *lines[700:]])


def batch_router(fleet: Fleet, engines: list[Engine], store: dict[str, Any], data_dir: Path) -> Router:
    """A router whose store is the test's own: the test run's TOKENYARD_DATA_DIR (which outranks the config
    file) is shared by every server the run starts, and each of those would run this batch's lines too."""
    config = {"api_keys": [{"key": KEY, "name": "owner"}], "batch": BATCH, **store}
    env = {"TOKENYARD_DATA_DIR": str(data_dir)}
    router = Router(fleet.workdir, [engine.url for engine in engines], config=config, env=env)
    fleet.routers.append(router)
    return router


def client(router: Router) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{router.url}/v1", api_key=KEY, max_retries=0, timeout=30)


def done_lines(router: Router, batch_id: str) -> int:
    counts = client(router).batches.retrieve(batch_id).request_counts
    return 0 if counts is None else counts.completed + counts.failed


def lines_run(router: Router) -> float:
    """Lines this router ran to a result: its tokenyard_batch_requests_total{outcome="completed"}."""
    text = httpx.get(f"{router.url}/metrics", timeout=5).text
    match = re.search(r'^tokenyard_batch_requests_total\{outcome="completed"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def start_batch(router: Router) -> str:
    api = client(router)
    upload = api.files.create(file=("in.jsonl", io.BytesIO(input_file())), purpose="batch")
    batch = api.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    return batch.id


def kill(router: Router) -> None:
    assert router.proc is not None
    router.proc.send_signal(signal.SIGKILL)
    router.proc.wait(10)
    router.proc = None


def check_results(router: Router, batch_id: str, engines: list[Engine], kills: int) -> None:
    api = client(router)
    wait_until(lambda: api.batches.retrieve(batch_id).status == "completed", 240, "the batch completes")
    batch = api.batches.retrieve(batch_id)
    assert batch.request_counts is not None
    assert batch.output_file_id is not None and batch.error_file_id is not None
    output = [orjson.loads(line) for line in api.files.content(batch.output_file_id).content.splitlines()]
    errors = [orjson.loads(line) for line in api.files.content(batch.error_file_id).content.splitlines()]
    why = Counter(  # what the failed lines were answered, should the counts be wrong
        orjson.dumps(line["error"] or [line["response"]["status_code"], line["response"]["body"]])[:200]
        for line in errors
    )
    assert batch.request_counts.model_dump() == {"total": LINES, "completed": LINES - 1, "failed": 1}, why
    ids = [line["custom_id"] for line in output + errors]
    assert len(ids) == len(set(ids)) == LINES  # every custom_id exactly once
    assert [line["custom_id"] for line in errors] == ["malformed"] and "method" in errors[0]["error"]["message"]
    assert all(line["response"]["status_code"] == 200 for line in output)
    # Each line ran once, but those a killed process held when it died (at most its concurrency each time).
    ran = sum(engine.stats()["requests"] for engine in engines)
    assert LINES - 1 <= ran <= LINES - 1 + kills * CONCURRENCY, ran


def test_a_batch_survives_its_router_killed_twice(fleet: Fleet, tmp_path: Path) -> None:
    engines = [Engine(fleet.workdir, tokens=2, delay_ms=5).start() for _ in range(2)]
    fleet.engines += engines
    router = batch_router(fleet, engines, {}, tmp_path / "data").start()
    for engine in engines:
        engine.wait_ready()
    router.wait_ready()
    batch_id = start_batch(router)
    for at_least in (300, 900):
        wait_until(lambda n=at_least: done_lines(router, batch_id) >= n, 120, f"{at_least} lines done")
        kill(router)
        router.start().wait_ready()
    check_results(router, batch_id, engines, kills=2)
    assert KEY not in router.log_path.read_text()


def test_two_replicas_share_a_batch_and_one_is_killed(
    fleet: Fleet,
    postgres_server: PostgresServer,  # noqa: F811  (the fixture)
    tmp_path: Path,
) -> None:
    engines = [Engine(fleet.workdir, tokens=2, delay_ms=5).start() for _ in range(2)]
    fleet.engines += engines
    store = {"store": {"url": postgres_server.url, "timeout_s": 5}}
    one, two = (batch_router(fleet, engines, store, tmp_path / name) for name in ("one", "two"))
    for router in (one, two):
        router.start()
    for engine in engines:
        engine.wait_ready()
    for router in (one, two):
        router.wait_ready()
    batch_id = start_batch(one)
    wait_until(lambda: done_lines(two, batch_id) >= 500, 120, "500 lines done")
    assert lines_run(one) > 0 and lines_run(two) > 0  # both replicas claim lines of the one batch
    kill(one)
    check_results(two, batch_id, engines, kills=1)
