"""/v1/responses over the scripted engine: stored responses and continuations, owners, function tools and
their events, truncation, background runs, cancels and resumed streams, and a store that is down. (The real
engine and the openai SDK are in tests/e2e/test_responses.py and test_responses_tools.py.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from engine_adapters.base import Chunk, GenerateRequest
from gateway.errors import ContextLengthExceeded, InvalidRequest
from gateway.middleware.limits import TAIL_BYTES, usage_in
from gateway.services import responses_background
from gateway.services.responses_input import chat_messages
from tests.support.scripted_app import MODEL, RecordingAdapter, scripted_client, settings, state_of
from tests.support.scripted_engine import Script

KEYS = [{"key": "sk-alice-0123456789", "name": "alice"}, {"key": "sk-bob-0123456789", "name": "bob"}]
ALICE = {"authorization": "Bearer sk-alice-0123456789"}
BOB = {"authorization": "Bearer sk-bob-0123456789"}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def events_of(raw: bytes) -> list[dict[str, Any]]:
    blocks = [b for b in raw.split(b"\n\n") if b]
    events = []
    for block in blocks:
        event_line, data_line = block.split(b"\n")
        event = orjson.loads(data_line.removeprefix(b"data: "))
        assert event_line == b"event: " + event["type"].encode()
        events.append(event)
    return events


async def poll(client: httpx.AsyncClient, response_id: str, until: set[str], **kw: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        body: dict[str, Any] = (await client.get(f"/v1/responses/{response_id}", **kw)).json()
        if body["status"] in until:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"{response_id} never reached {until}")


async def test_a_stored_response_is_retrieved_listed_and_deleted(tmp_path: Path) -> None:
    async with scripted_client(settings(data_dir=tmp_path), RecordingAdapter(script=Script(tokens=3))) as client:
        items = [{"role": "user", "content": f"turn {i}"} for i in range(5)]
        created = (
            await client.post("/v1/responses", json={"model": MODEL, "input": items, "max_output_tokens": 9})
        ).json()
        assert created["store"] is True and created["status"] == "completed"
        fetched = (await client.get(f"/v1/responses/{created['id']}")).json()
        assert fetched == created
        listed = (await client.get(f"/v1/responses/{created['id']}/input_items", params={"limit": 2})).json()
        assert listed["object"] == "list" and listed["has_more"] is True
        assert [item["content"][0]["text"] for item in listed["data"]] == ["turn 4", "turn 3"]
        assert listed["first_id"] == listed["data"][0]["id"] and listed["last_id"] == listed["data"][1]["id"]
        rest = (
            await client.get(
                f"/v1/responses/{created['id']}/input_items",
                params={"after": listed["last_id"], "order": "desc", "limit": 10},
            )
        ).json()
        assert [item["content"][0]["text"] for item in rest["data"]] == ["turn 2", "turn 1", "turn 0"]
        assert rest["has_more"] is False
        ascending = (await client.get(f"/v1/responses/{created['id']}/input_items", params={"order": "asc"})).json()
        assert [item["content"][0]["text"] for item in ascending["data"]] == [f"turn {i}" for i in range(5)]
        deleted = await client.delete(f"/v1/responses/{created['id']}")
        assert deleted.json() == {"id": created["id"], "object": "response", "deleted": True}
        gone = await client.get(f"/v1/responses/{created['id']}")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"


async def test_an_assistant_turn_is_listed_as_an_output_message(tmp_path: Path) -> None:
    items = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "?"},
    ]
    async with scripted_client(settings(data_dir=tmp_path)) as client:
        created = (await client.post("/v1/responses", json={"model": MODEL, "input": items})).json()
        listed = (await client.get(f"/v1/responses/{created['id']}/input_items", params={"order": "asc"})).json()
    assistant = listed["data"][1]
    assert assistant["role"] == "assistant" and assistant["status"] == "completed"
    assert assistant["content"] == [{"type": "output_text", "text": "Hello.", "annotations": []}]


async def test_store_false_is_not_kept(tmp_path: Path) -> None:
    async with scripted_client(settings(data_dir=tmp_path)) as client:
        created = (await client.post("/v1/responses", json={"model": MODEL, "input": "x", "store": False})).json()
        assert created["store"] is False
        assert (await client.get(f"/v1/responses/{created['id']}")).status_code == 404


async def test_a_continuation_carries_the_history_and_another_key_gets_404(tmp_path: Path) -> None:
    engine = RecordingAdapter(script=Script(tokens=2))
    async with scripted_client(settings(data_dir=tmp_path, api_keys=KEYS), engine, headers=ALICE) as client:
        first = (
            await client.post("/v1/responses", json={"model": MODEL, "input": "Hello", "instructions": "Be brief."})
        ).json()
        second = (
            await client.post(
                "/v1/responses",
                json={
                    "model": MODEL,
                    "input": "And then?",
                    "previous_response_id": first["id"],
                    "instructions": "New.",
                },
            )
        ).json()
        assert second["previous_response_id"] == first["id"]
        messages = engine.requests[-1].messages
        assert messages == [
            {"role": "system", "content": "New."},  # a previous response's instructions are not carried over
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "t0 t1 "},
            {"role": "user", "content": "And then?"},
        ]
        for path in (f"/v1/responses/{first['id']}", f"/v1/responses/{first['id']}/input_items"):
            other = await client.get(path, headers=BOB)
            assert other.status_code == 404, path
        across = await client.post(
            "/v1/responses", headers=BOB, json={"model": MODEL, "input": "x", "previous_response_id": first["id"]}
        )
        assert across.status_code == 404 and across.json()["error"]["param"] == "previous_response_id"
        assert (await client.delete(f"/v1/responses/{first['id']}", headers=BOB)).status_code == 404
        assert (await client.get(f"/v1/responses/{first['id']}")).status_code == 200


async def test_a_named_function_is_a_function_call_item_streamed_as_calls_are(tmp_path: Path) -> None:
    engine = RecordingAdapter(script=Script(texts=('{"city": ', '"Paris"}')))
    body = {
        "model": MODEL,
        "input": "Weather in Paris?",
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "name": "get_weather"},
    }
    async with scripted_client(settings(data_dir=tmp_path), engine) as client:
        whole = (await client.post("/v1/responses", json=body)).json()
        assert engine.requests[-1].sampling.structured is not None  # forced by structured output, as chat is
        assert engine.requests[-1].tools == [
            {"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}
        ]
        [call] = whole["output"]
        assert call["type"] == "function_call" and call["name"] == "get_weather" and call["status"] == "completed"
        assert orjson.loads(call["arguments"]) == {"city": "Paris"} and call["call_id"].startswith("call_")
        assert whole["tools"] == [{**WEATHER}] and whole["tool_choice"] == {"type": "function", "name": "get_weather"}
        raw = (await client.post("/v1/responses", json={**body, "stream": True})).content
    events = events_of(raw)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    added, delta, done, item_done, completed = events[2:]
    assert added["item"]["status"] == "in_progress" and added["item"]["arguments"] == ""
    assert delta["item_id"] == done["item_id"] == added["item"]["id"] and done["arguments"] == delta["delta"]
    assert item_done["item"] == completed["response"]["output"][0] and item_done["item"]["status"] == "completed"


async def test_required_with_parallel_calls_and_a_continuation_with_their_outputs(tmp_path: Path) -> None:
    calls = orjson.dumps([{"name": "get_weather", "arguments": {"city": c}} for c in ("Oslo", "Rome")]).decode()
    engine = RecordingAdapter(script=Script(texts=(calls,)))
    async with scripted_client(settings(data_dir=tmp_path), engine) as client:
        first = (
            await client.post(
                "/v1/responses",
                json={"model": MODEL, "input": "Two cities", "tools": [WEATHER], "tool_choice": "required"},
            )
        ).json()
        output = first["output"]
        assert [orjson.loads(c["arguments"])["city"] for c in output] == ["Oslo", "Rome"]
        engine.script = Script(texts=("Cold ", "and warm."))
        results = [{"type": "function_call_output", "call_id": c["call_id"], "output": "5C"} for c in output]
        second = (
            await client.post(
                "/v1/responses",
                json={"model": MODEL, "input": results, "previous_response_id": first["id"], "tools": [WEATHER]},
            )
        ).json()
        assert second["output"][0]["content"][0]["text"] == "Cold and warm."
        messages = engine.requests[-1].messages
        assert messages[0] == {"role": "user", "content": "Two cities"}
        assert messages[1]["role"] == "assistant" and [c["id"] for c in messages[1]["tool_calls"]] == [
            c["call_id"] for c in output
        ]
        assert [m["role"] for m in messages[2:]] == ["tool", "tool"]
        assert messages[2]["name"] == "get_weather" and messages[2]["content"] == "5C"
        # The same turn sent whole, as a client that keeps its own history does (store false).
        whole = await client.post(
            "/v1/responses",
            json={
                "model": MODEL,
                "store": False,
                "input": [{"role": "user", "content": "Two cities"}, *output, *results],
                "tools": [WEATHER],
            },
        )
        assert whole.status_code == 200 and engine.requests[-1].messages == messages


async def test_text_format_json_schema_is_structured_output(tmp_path: Path) -> None:
    engine = RecordingAdapter(script=Script(texts=('{"a": 1}',)))
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}
    async with scripted_client(settings(data_dir=tmp_path), engine) as client:
        answer = (
            await client.post("/v1/responses", json={"model": MODEL, "input": "x", "text": {"format": fmt}})
        ).json()
        structured = engine.requests[-1].sampling.structured
        assert structured is not None and structured.kind == "json" and structured.spec == schema
        assert answer["text"] == {"format": fmt}
        await client.post(
            "/v1/responses", json={"model": MODEL, "input": "x", "text": {"format": {"type": "json_object"}}}
        )
        structured = engine.requests[-1].sampling.structured
        assert structured is not None and structured.kind == "json_object"
        # A forced call is shaped by the call's schema; text.format shapes only text, which it does not answer.
        engine.script = Script(texts=('{"city": "Paris"}',))
        forced = await client.post(
            "/v1/responses",
            json={
                "model": MODEL,
                "input": "x",
                "text": {"format": fmt},
                "tools": [WEATHER],
                "tool_choice": {"type": "function", "name": "get_weather"},
            },
        )
        assert forced.status_code == 200 and forced.json()["output"][0]["type"] == "function_call"
        structured = engine.requests[-1].sampling.structured
        assert structured is not None and structured.spec == WEATHER["parameters"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"tools": [WEATHER], "tool_choice": {"type": "file_search"}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"background": True, "store": False}, "background"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
        ({"input": []}, "input"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"previous_response_id": "resp_missing"}, "previous_response_id"),
    ],
)
async def test_what_is_not_served_is_a_clear_4xx(tmp_path: Path, body: dict[str, Any], param: str) -> None:
    async with scripted_client(settings(data_dir=tmp_path)) as client:
        answer = await client.post("/v1/responses", json={"model": MODEL, "input": "x", **body})
    assert answer.status_code in (400, 404), answer.text
    error = answer.json()["error"]
    assert error["param"] == param and error["message"] and error["type"] == "invalid_request_error"


class ShortContext(RecordingAdapter):
    """Refuses a prompt of more than `turns` messages, as an engine refuses one past its context."""

    def __init__(self, turns: int) -> None:
        super().__init__(script=Script(tokens=2))
        self.turns = turns

    def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        assert request.messages is not None
        if len(request.messages) > self.turns:
            self.requests.append(request)
            raise ContextLengthExceeded("This model's maximum context length is exceeded.", param="input")
        return super().generate(request)


async def test_truncation_auto_drops_the_oldest_items(tmp_path: Path) -> None:
    engine = ShortContext(turns=3)
    items = [{"role": "user", "content": f"turn {i}"} for i in range(5)]
    async with scripted_client(settings(data_dir=tmp_path), engine) as client:
        refused = await client.post("/v1/responses", json={"model": MODEL, "input": items, "instructions": "I."})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
        served = await client.post(
            "/v1/responses", json={"model": MODEL, "input": items, "instructions": "I.", "truncation": "auto"}
        )
        assert served.status_code == 200 and served.json()["truncation"] == "auto"
    assert engine.requests[-1].messages == [
        {"role": "system", "content": "I."},
        {"role": "user", "content": "turn 3"},
        {"role": "user", "content": "turn 4"},
    ]


async def test_a_store_that_is_down_is_503_for_store_true_only(tmp_path: Path) -> None:
    down = settings(data_dir=tmp_path, store={"url": "postgresql://u:pw-4711@127.0.0.1:1/db", "timeout_s": 2})
    engine = RecordingAdapter()
    async with scripted_client(down, engine) as client:
        refused = await client.post("/v1/responses", json={"model": MODEL, "input": "x"})
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert refused.json()["error"]["code"] == "store_unavailable" and "pw-4711" not in refused.text
        streamed = await client.post("/v1/responses", json={"model": MODEL, "input": "x", "stream": True})
        assert streamed.status_code == 503
        assert engine.requests == []  # refused before the engine is asked
        served = await client.post("/v1/responses", json={"model": MODEL, "input": "x", "store": False})
        assert served.status_code == 200 and served.json()["status"] in ("completed", "incomplete")
        assert (await client.get("/v1/responses/resp_1")).status_code == 503


async def test_background_runs_after_the_answer_and_is_retrieved(tmp_path: Path) -> None:
    engine = RecordingAdapter(script=Script(tokens=4, delay_s=0.05))
    async with scripted_client(settings(data_dir=tmp_path), engine) as client:
        queued = (await client.post("/v1/responses", json={"model": MODEL, "input": "x", "background": True})).json()
        assert queued["status"] == "queued" and queued["background"] is True and queued["output"] == []
        done = await poll(client, queued["id"], {"completed", "incomplete"})
        assert done["output"][0]["content"][0]["text"] == "t0 t1 t2 t3 "
        not_cancellable = await client.post(f"/v1/responses/{done['id']}/cancel")
        assert not_cancellable.status_code == 400


async def test_a_background_response_is_cancelled(tmp_path: Path) -> None:
    engine = RecordingAdapter(script=Script(tokens=400, delay_s=0.02))
    async with scripted_client(settings(data_dir=tmp_path), engine) as client:
        queued = (await client.post("/v1/responses", json={"model": MODEL, "input": "x", "background": True})).json()
        await poll(client, queued["id"], {"in_progress"})
        cancelled = await client.post(f"/v1/responses/{queued['id']}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        deadline = time.monotonic() + 10
        while queued["id"] not in engine.abort_calls and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert queued["id"] in engine.abort_calls  # the engine request stops
        assert (await client.get(f"/v1/responses/{queued['id']}")).json()["status"] == "cancelled"
        again = await client.post(f"/v1/responses/{queued['id']}/cancel")
        assert again.status_code == 200 and again.json()["status"] == "cancelled"


async def test_a_background_stream_is_resumed_after_a_sequence_number(tmp_path: Path) -> None:
    engine = RecordingAdapter(script=Script(tokens=5, delay_s=0.02))
    body = {"model": MODEL, "input": "x", "background": True, "stream": True}
    async with scripted_client(settings(data_dir=tmp_path), engine) as client:
        first = events_of((await client.post("/v1/responses", json=body)).content)
        response_id = first[0]["response"]["id"]
        assert first[-1]["type"] == "response.completed" or first[-1]["type"] == "response.incomplete"
        assert [e["sequence_number"] for e in first] == list(range(len(first)))
        resumed = await client.get(f"/v1/responses/{response_id}", params={"stream": "true", "starting_after": 3})
        assert events_of(resumed.content) == first[4:]
        plain = (await client.post("/v1/responses", json={**body, "stream": False})).json()
        await poll(client, plain["id"], {"completed", "incomplete"})
        not_streamed = await client.get(f"/v1/responses/{plain['id']}", params={"stream": "true"})
        assert not_streamed.status_code == 400


async def test_a_follower_waits_for_the_last_events_written_after_the_row_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run writes its row's end just before its terminal event; a follower reading between the two gets the
    event (one CI run under load ended the stream early), and a resume from past the end ends at once."""
    monkeypatch.setattr(responses_background, "ENDED_WAIT_S", 3600.0)
    async with scripted_client(settings(data_dir=tmp_path)) as client:
        store = state_of(client).response_store
        assert store is not None
        body = {"id": "resp_race", "status": "in_progress", "object": "response", "output": []}
        await store.create("none", body, [], background=True, streamed=True)
        opened = {"type": "response.created", "sequence_number": 0}
        await store.append_events("resp_race", [(0, orjson.dumps(opened).decode())])
        await store.save({**body, "status": "completed"})
        follower = asyncio.create_task(_read_all(await responses_background.resume(store, "none", "resp_race", -1)))
        await asyncio.sleep(3 * responses_background.POLL_S)  # the follower has seen the ended row, no end event
        assert not follower.done()
        completed = {"type": "response.completed", "sequence_number": 1}
        await store.append_events("resp_race", [(1, orjson.dumps(completed).decode())])
        assert [e["type"] for e in events_of(await asyncio.wait_for(follower, 30))] == [
            "response.created",
            "response.completed",
        ]
        past_end = await responses_background.resume(store, "none", "resp_race", 1)
        assert await asyncio.wait_for(_read_all(past_end), 30) == b""


async def _read_all(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([part async for part in stream])


def test_media_parts_become_chat_parts_as_plain_dicts() -> None:
    items = [
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "What is this?"},
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
                {"type": "input_image", "file_id": "file-1"},
                {"type": "input_file", "file_id": "file-2", "filename": "a.pdf"},
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            ],
        }
    ]
    [message] = chat_messages(None, items)
    assert message == {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
            {"type": "file", "file": {"file_id": "file-1"}},
            {"type": "file", "file": {"file_id": "file-2", "filename": "a.pdf"}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        ],
    }
    with pytest.raises(InvalidRequest):
        chat_messages(None, [{"type": "message", "role": "user", "content": [{"type": "input_image"}]}])


async def test_a_shutdown_leaves_a_running_background_response_failed_and_metered(tmp_path: Path) -> None:
    config = settings(data_dir=tmp_path, store={"heartbeat_s": 0.05})
    async with scripted_client(config, RecordingAdapter(script=Script(tokens=400, delay_s=0.02))) as client:
        queued = (await client.post("/v1/responses", json={"model": MODEL, "input": "x", "background": True})).json()
        await poll(client, queued["id"], {"in_progress"})
        deadline = time.monotonic() + 10
        metrics = ""
        while 'tokenyard_stored_responses{status="in_progress"} 1.0' not in metrics and time.monotonic() < deadline:
            metrics = (await client.get("/metrics")).text
            await asyncio.sleep(0.05)
        assert 'tokenyard_stored_responses{status="in_progress"} 1.0' in metrics
        assert 'tokenyard_store_duration_seconds_count{operation="create",outcome="ok"} 1.0' in metrics
    async with scripted_client(config) as client:  # the server came back: the response is there, failed
        stopped = (await client.get(f"/v1/responses/{queued['id']}")).json()
    assert stopped["status"] == "failed" and stopped["error"]["code"] == "server_error"


async def test_usage_is_in_the_tail_the_limits_read_to_correct_a_charge(tmp_path: Path) -> None:
    body = {"model": MODEL, "input": "x", "metadata": {f"k{i}": "v" * 500 for i in range(16)}}
    async with scripted_client(settings(data_dir=tmp_path)) as client:
        whole = await client.post("/v1/responses", json=body)
        streamed = await client.post("/v1/responses", json={**body, "stream": True})
    for answer in (whole.content, streamed.content):
        usage = usage_in(answer[-TAIL_BYTES:])
        assert usage is not None and usage.total_tokens == whole.json()["usage"]["total_tokens"]
