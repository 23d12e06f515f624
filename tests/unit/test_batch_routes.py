"""The Batch API over ASGI on the scripted engine, with the real openai SDK: files (upload, list, pages, content,
delete, owners), batches (validation errors with line numbers, a malformed line in the error file, results
keyed by custom_id, cancel, expiry, lines refused for load tried again), through the real SQLite store."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import pytest_asyncio

from engine_adapters.base import Chunk, GenerateRequest
from gateway.settings import ApiKey, BatchSettings
from tests.support.scripted_app import MODEL, scripted_client, settings, state_of
from tests.support.scripted_engine import Script, ScriptedAdapter
from tests.support.waiting import until

ALICE, BOB = "sk-alice-batch-0123456789", "sk-bob-batch-0123456789"


def sdk(client: httpx.AsyncClient, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url="http://test/v1", api_key=key, http_client=client, max_retries=0)


def jsonl(*lines: Any) -> bytes:
    return b"".join((line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n" for line in lines)


def chat_line(custom_id: str, content: str = "hello there", **extra: Any) -> dict[str, Any]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


@pytest_asyncio.fixture(loop_scope="function")  # the runner must run on the test's own loop
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    config = settings(
        data_dir=tmp_path,
        api_keys=[ApiKey(key=ALICE, name="alice"), ApiKey(key=BOB, name="bob")],  # type: ignore[arg-type]
        batch=BatchSettings(poll_s=0.05, retry_s=0.05, lease_s=5),
    )
    async with scripted_client(config) as built:
        yield built


async def submit(api: openai.AsyncOpenAI, *lines: Any, endpoint: str = "/v1/chat/completions") -> Any:
    upload = await api.files.create(file=("in.jsonl", io.BytesIO(jsonl(*lines))), purpose="batch")
    return await api.batches.create(input_file_id=upload.id, endpoint=endpoint, completion_window="24h")  # type: ignore[arg-type]


async def finished(api: openai.AsyncOpenAI, batch_id: str) -> Any:
    async def done() -> Any:
        batch = await api.batches.retrieve(batch_id)
        return batch if batch.status in ("completed", "failed", "expired", "cancelled") else None

    return await until(done, 20, "the batch ends") and await api.batches.retrieve(batch_id)


async def lines_of(api: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = await api.files.content(file_id)
    return [orjson.loads(line) for line in content.content.splitlines()]


async def test_files_upload_list_page_content_and_delete_per_owner(client: httpx.AsyncClient) -> None:
    alice, bob = sdk(client, ALICE), sdk(client, BOB)
    data = bytes(range(256)) * 9000  # over two store chunks
    made = [await alice.files.create(file=(f"f{i}.bin", io.BytesIO(data)), purpose="user_data") for i in range(3)]
    assert made[0].bytes == len(data) and made[0].purpose == "user_data" and made[0].filename == "f0.bin"
    assert (await alice.files.content(made[0].id)).content == data
    page = await alice.files.list(limit=2)
    assert [f.id for f in page.data] == [made[2].id, made[1].id] and page.has_more
    rest = await alice.files.list(limit=2, after=made[1].id)
    assert [f.id for f in rest.data] == [made[0].id] and not rest.has_more
    assert [f.id async for f in await alice.files.list(order="asc")] == [f.id for f in made]
    with pytest.raises(openai.NotFoundError):
        await bob.files.retrieve(made[0].id)
    with pytest.raises(openai.NotFoundError):
        await bob.files.content(made[0].id)
    with pytest.raises(openai.NotFoundError):
        await bob.files.delete(made[0].id)
    assert (await bob.files.list()).data == []
    deleted = await alice.files.delete(made[0].id)
    assert deleted.deleted and deleted.id == made[0].id
    with pytest.raises(openai.NotFoundError):
        await alice.files.retrieve(made[0].id)


async def test_an_upload_past_the_cap_or_with_a_bad_purpose_is_refused_and_not_kept(tmp_path: Path) -> None:
    config = settings(data_dir=tmp_path, batch=BatchSettings(max_file_bytes=4096))
    async with scripted_client(config) as client:
        api = sdk(client, "none")
        with pytest.raises(openai.BadRequestError):
            await api.files.create(file=("a.jsonl", io.BytesIO(b"x" * 5000)), purpose="batch")
        with pytest.raises(openai.APIStatusError) as too_large:  # its declared length is past the cap: not read
            await api.files.create(file=("a.jsonl", io.BytesIO(b"x" * 100_000)), purpose="batch")
        assert too_large.value.status_code == 413
        with pytest.raises(openai.BadRequestError) as refused:
            await api.files.create(file=("a.jsonl", io.BytesIO(b"x")), purpose="fine-tune")
        assert refused.value.body["param"] == "purpose"  # type: ignore[index]
        not_form = await client.post("/v1/files", json={"purpose": "batch"})
        assert not_form.status_code == 400 and not_form.json()["error"]["type"] == "invalid_request_error"
        assert (await api.files.list()).data == []


async def test_a_batch_runs_each_line_once_keyed_by_custom_id(client: httpx.AsyncClient) -> None:
    api = sdk(client, ALICE)
    lines = [chat_line(f"req-{i}", f"word {i}") for i in range(12)]
    bad = {"custom_id": "bad-url", "method": "POST", "url": "/v1/embeddings", "body": {"model": MODEL}}
    unknown = chat_line("no-model")
    unknown["body"]["model"] = "nope"
    upload = await api.files.create(file=("in.jsonl", io.BytesIO(jsonl(*lines, bad, unknown))), purpose="batch")
    batch = await api.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"k": "v"}
    )
    assert batch.status == "validating" and batch.metadata == {"k": "v"}
    ended = await finished(api, batch.id)
    assert ended.status == "completed", ended
    assert ended.request_counts is not None and ended.request_counts.model_dump() == {
        "total": 14,
        "completed": 12,
        "failed": 2,
    }
    assert ended.in_progress_at and ended.finalizing_at and ended.completed_at
    output = await lines_of(api, ended.output_file_id)
    errors = await lines_of(api, ended.error_file_id)
    assert sorted(line["custom_id"] for line in output) == sorted(f"req-{i}" for i in range(12))
    for line in output:
        assert line["error"] is None and line["response"]["status_code"] == 200
        assert line["response"]["body"]["object"] == "chat.completion"
        assert line["id"].startswith("batch_req_") and line["response"]["request_id"] == line["id"]
    by_id = {line["custom_id"]: line for line in errors}
    assert by_id["bad-url"]["response"] is None and "Line 13" in by_id["bad-url"]["error"]["message"]
    assert by_id["no-model"]["response"]["status_code"] == 404
    assert by_id["no-model"]["response"]["body"]["error"]["code"] == "model_not_found"
    assert [b.id async for b in await api.batches.list()] == [batch.id]
    with pytest.raises(openai.NotFoundError):
        await sdk(client, BOB).batches.retrieve(batch.id)
    metrics = (await client.get("/metrics")).text
    assert 'tokenyard_batch_requests_total{outcome="completed"} 12.0' in metrics
    assert 'tokenyard_batch_requests_total{outcome="failed"} 1.0' in metrics  # the unknown model's 404

    async def counted() -> bool:
        return 'tokenyard_batches{status="completed"} 1.0' in (await client.get("/metrics")).text

    await until(counted, 10, "the batch counted by status")


async def test_a_malformed_file_fails_the_batch_with_line_numbers(client: httpx.AsyncClient) -> None:
    api = sdk(client, ALICE)
    content = jsonl(chat_line("a"), b"{not json", {"method": "POST"}, chat_line("a"))
    upload = await api.files.create(file=("in.jsonl", io.BytesIO(content)), purpose="batch")
    batch = await api.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    ended = await finished(api, batch.id)
    assert ended.status == "failed" and ended.errors is not None and ended.errors.data is not None
    assert [(e.code, e.line) for e in ended.errors.data] == [
        ("invalid_json_line", 2),
        ("missing_custom_id", 3),
        ("duplicate_custom_id", 4),
    ]


async def test_create_refuses_what_openai_refuses(client: httpx.AsyncClient) -> None:
    api = sdk(client, ALICE)
    kept = await api.files.create(file=("u.txt", io.BytesIO(b"x")), purpose="user_data")
    with pytest.raises(openai.BadRequestError):
        await api.batches.create(input_file_id=kept.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        await api.batches.create(input_file_id="file-none", endpoint="/v1/chat/completions", completion_window="24h")
    wrong = await client.post(
        "/v1/batches",
        json={"input_file_id": kept.id, "endpoint": "/v1/moderations", "completion_window": "24h"},
        headers={"authorization": f"Bearer {ALICE}"},
    )
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "endpoint"


async def test_lines_refused_for_load_are_tried_again_and_cancel_ends_the_rest(tmp_path: Path) -> None:
    adapter = ScriptedAdapter(MODEL, Script(tokens=2, delay_s=0.2))
    config = settings(
        data_dir=tmp_path,
        limits={"max_in_flight": 1, "max_queue": 0},
        batch=BatchSettings(poll_s=0.05, retry_s=0.05, max_concurrency=3),
    )
    async with scripted_client(config, adapter) as client:
        api = sdk(client, "none")
        batch = await submit(api, *(chat_line(f"r{i}") for i in range(40)))

        async def some_done() -> bool:
            counts = (await api.batches.retrieve(batch.id)).request_counts
            return counts is not None and counts.completed >= 2

        await until(some_done, 20, "two lines done")
        assert state_of(client).metrics.batch_requests.labels("retried")._value.get() > 0
        cancelling = await api.batches.cancel(batch.id)
        assert cancelling.status == "cancelling"
        ended = await finished(api, batch.id)
        assert ended.status == "cancelled" and ended.cancelled_at
        output, errors = await lines_of(api, ended.output_file_id), await lines_of(api, ended.error_file_id)
        assert sorted(line["custom_id"] for line in output + errors) == sorted(f"r{i}" for i in range(40))
        assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
        assert all(line["response"]["status_code"] == 200 for line in output)


class FirstLinesFast(ScriptedAdapter):
    """The first three requests answer at once, the rest take a minute each: a batch's window ends with some
    lines done and some not, however loaded the machine (a 1.5 s window once ended with none done on CI)."""

    def __init__(self) -> None:
        super().__init__(MODEL, Script(tokens=2))
        self.started = 0

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        self.started += 1
        if self.started > 3:
            self.script = Script(tokens=2, delay_s=30.0)
        async for chunk in super().generate(request):
            yield chunk


async def test_an_expired_batch_reports_its_unfinished_lines(tmp_path: Path) -> None:
    adapter = FirstLinesFast()
    config = settings(
        data_dir=tmp_path,
        batch=BatchSettings(poll_s=0.05, completion_window_s=3.0, max_concurrency_per_batch=1),
    )
    async with scripted_client(config, adapter) as client:
        api = sdk(client, "none")
        batch = await submit(api, *(chat_line(f"r{i}") for i in range(30)))
        ended = await finished(api, batch.id)
        assert ended.status == "expired" and ended.expired_at
        output, errors = await lines_of(api, ended.output_file_id), await lines_of(api, ended.error_file_id)
        assert 0 < len(output) < 30 and len(output) + len(errors) == 30
        assert {line["error"]["code"] for line in errors} == {"batch_expired"}


async def test_responses_lines_run_on_their_path(tmp_path: Path) -> None:
    async with scripted_client(settings(data_dir=tmp_path, batch=BatchSettings(poll_s=0.05))) as client:
        api = sdk(client, "none")
        line = {"custom_id": "r", "method": "POST", "url": "/v1/responses", "body": {"model": MODEL, "input": "hi"}}
        batch = await submit(api, line, endpoint="/v1/responses")
        ended = await finished(api, batch.id)
        (output,) = await lines_of(api, ended.output_file_id)
        assert output["custom_id"] == "r" and output["response"]["body"]["object"] == "response"
        assert output["response"]["body"]["output"][0]["type"] == "message"


async def test_batch_lines_are_charged_to_the_owners_budget(tmp_path: Path) -> None:
    key = ApiKey(key=ALICE, name="alice", tokens_per_day=60)  # type: ignore[arg-type]
    config = settings(data_dir=tmp_path, api_keys=[key], batch=BatchSettings(poll_s=0.05, max_concurrency=1))
    async with scripted_client(config) as client:
        batch = await submit(sdk(client, ALICE), *(chat_line(f"r{i}") for i in range(10)))
        # Once the budget is spent the key's every request is refused (retrievals too): read the store itself.
        store = state_of(client).batches
        assert store is not None

        async def ended() -> dict[str, Any] | None:
            found = await store.get("alice", batch.id)
            return found if found["status"] == "completed" else None

        await until(ended, 20, "the batch completes")
        done = await store.get("alice", batch.id)
        output, errors = (
            await stored_lines(store, done["output_file_id"]),
            await stored_lines(store, done["error_file_id"]),
        )
        assert output and errors and len(output) + len(errors) == 10  # the budget ran out part way
        assert {line["response"]["status_code"] for line in errors} == {429}
        assert {line["response"]["body"]["error"]["code"] for line in errors} == {"insufficient_quota"}


async def stored_lines(store: Any, file_id: str) -> list[dict[str, Any]]:
    stored = await store.files.get("alice", file_id)
    return [orjson.loads(line) async for chunk in store.files.chunks(stored) for line in chunk.splitlines()]


async def test_files_in_a_directory(tmp_path: Path) -> None:
    directory = tmp_path / "files"
    config = settings(data_dir=tmp_path / "data", batch=BatchSettings(poll_s=0.05, files_dir=directory))
    async with scripted_client(config) as client:
        api = sdk(client, "none")
        batch = await submit(api, chat_line("a"), chat_line("b"))
        assert (directory / batch.input_file_id).read_bytes() == jsonl(chat_line("a"), chat_line("b"))
        ended = await finished(api, batch.id)
        assert ended.output_file_id is not None and (directory / ended.output_file_id).is_file()
        assert [line["custom_id"] for line in await lines_of(api, ended.output_file_id)] == ["a", "b"]
        await api.files.delete(ended.output_file_id)
        assert not (directory / ended.output_file_id).exists()
