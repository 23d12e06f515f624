"""Body size and read deadline as the bytes arrive, bounds on the JSON's shape, one JSON parse, and the body
replayed to the app."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from gateway.errors import InvalidRequest
from gateway.middleware.body import BodyMiddleware, JsonBounds, check_shape, replaying
from gateway.middleware.body import parse_json as parse_within
from gateway.middleware.context import request_info
from gateway.state import AppState
from tests.support.scripted_app import MODEL, RecordingAdapter, chat, scripted_client, settings, state_of

LIMIT = 4096
BOUNDS = JsonBounds(depth=64, containers=20_000, elements=250_000)  # LimitSettings' defaults
MAX_JSON_DEPTH = BOUNDS.depth


def parse_json(raw: bytes) -> Any:
    return parse_within(raw, BOUNDS)


async def _chunks(total: int, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, total, size):
        yield b"x" * min(size, total - start)


async def test_oversized_body_is_413_before_the_app_sees_it() -> None:
    adapter = RecordingAdapter()
    async with scripted_client(settings(limits={"max_body_bytes": LIMIT}), adapter) as client:
        declared = await client.post("/v1/completions", content=b"x" * (LIMIT + 1))
        chunked = await client.post("/v1/completions", content=_chunks(LIMIT * 3))  # no content-length
        assert "content-length" not in chunked.request.headers
        for response in (declared, chunked):
            assert response.status_code == 413
            assert response.headers["connection"] == "close"
            assert response.json()["error"] == {
                "message": f"The request body is larger than {LIMIT} bytes.",
                "type": "invalid_request_error",
                "param": None,
                "code": "payload_too_large",
            }
        body = orjson.dumps({"model": MODEL, "prompt": "y" * (LIMIT - 100)})
        assert len(body) <= LIMIT
        response = await client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 200
        assert len(adapter.requests) == 1
        assert state_of(client).metrics.rejected.labels("body_size")._value.get() == 2


def _asgi(
    app: Any, scope: Scope, messages: list[dict[str, Any]], pause_after: int | None = None
) -> tuple[Receive, Send, list[Message]]:
    sent: list[Message] = []
    queue = list(messages)

    async def receive() -> Message:
        if pause_after is not None and len(messages) - len(queue) >= pause_after:
            await asyncio.sleep(3600)  # a client that stops sending halfway
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    return receive, send, sent


def _scope(path: str = "/v1/completions", method: str = "POST") -> Scope:
    return {"type": "http", "method": method, "path": path, "headers": [], "client": ("127.0.0.1", 1)}


async def test_a_trickling_body_gets_408_at_the_deadline() -> None:
    state = AppState(settings=settings(limits={"body_timeout_s": 0.3}))
    reached: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(True)

    middleware = BodyMiddleware(app, state)
    first = {"type": "http.request", "body": b'{"model": "', "more_body": True}
    receive, send, sent = _asgi(middleware, _scope(), [first], pause_after=1)
    started = time.perf_counter()
    await middleware(_scope(), receive, send)
    elapsed = time.perf_counter() - started
    assert 0.29 <= elapsed < 2.0 and not reached  # at the deadline: the client would trickle forever
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    assert orjson.loads(sent[1]["body"])["error"]["code"] == "request_timeout"
    assert state.metrics.rejected.labels("body_timeout")._value.get() == 1


async def test_the_body_is_replayed_whole_and_a_disconnect_still_arrives() -> None:
    state = AppState(settings=settings())
    seen: list[Message] = []
    payload = chat(max_tokens=3)
    raw = orjson.dumps(payload)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.extend([await receive(), await receive()])
        assert request_info(scope).body == payload and request_info(scope).model == MODEL

    parts = [
        {"type": "http.request", "body": raw[:10], "more_body": True},
        {"type": "http.request", "body": raw[10:], "more_body": False},
    ]
    receive, send, _ = _asgi(None, _scope(), parts)
    await BodyMiddleware(app, state)(_scope(), receive, send)
    assert seen == [{"type": "http.request", "body": raw, "more_body": False}, {"type": "http.disconnect"}]


async def test_the_replayed_bytes_are_let_go_once_read() -> None:
    raw = orjson.dumps(chat(max_tokens=3))
    disconnect = {"type": "http.disconnect"}

    async def receive() -> Message:
        return disconnect

    replay = replaying(raw, receive)
    assert any(cell.cell_contents is raw for cell in replay.__closure__ or ())
    assert await replay() == {"type": "http.request", "body": raw, "more_body": False}
    assert not any(cell.cell_contents is raw for cell in replay.__closure__ or ())  # a held request keeps none
    assert await replay() is disconnect


async def test_a_client_that_leaves_mid_body_gets_no_answer() -> None:
    state = AppState(settings=settings())
    receive, send, sent = _asgi(None, _scope(), [{"type": "http.request", "body": b"{", "more_body": True}])

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("the app must not run")

    await BodyMiddleware(app, state)(_scope(), receive, send)
    assert sent == []


def _nested(depth: int) -> bytes:
    return b'{"model": "m", "x": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"model": ', "The request body is not valid JSON."),
        (b'{"model": "\xff\xfe"}', "The request body is not valid JSON."),
        (b'{"model": "\xed\xa0\x80"}', "The request body is not valid JSON."),  # an encoded surrogate
        (b'{"model": "\\ud800"}', "The request body is not valid JSON."),  # a lone surrogate escape
        (b'{"temperature": NaN}', "The request body is not valid JSON."),  # Python's json would take these
        (b'{"temperature": 1e400}', "The request body is not valid JSON."),
        (b"\xef\xbb\xbf{}", "The request body is not valid JSON."),
        (_nested(MAX_JSON_DEPTH + 1), f"The request body nests deeper than {MAX_JSON_DEPTH} levels."),
        (_nested(1000), f"The request body nests deeper than {MAX_JSON_DEPTH} levels."),
        (_nested(5000), f"The request body nests deeper than {MAX_JSON_DEPTH} levels."),  # past orjson's too
    ],
    ids=[
        "truncated",
        "invalid-utf8",
        "surrogate",
        "surrogate-escape",
        "nan",
        "infinity",
        "bom",
        "depth-65",
        "depth-1000",
        "depth-5000",
    ],
)
def test_unparsable_bodies(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_json(raw)
    assert err.value.message == message


def test_valid_json_is_accepted() -> None:
    assert parse_json(b'{"max_tokens": 100000000000000000000000}') == {"max_tokens": 1e23}  # orjson: a float
    assert parse_json(_nested(MAX_JSON_DEPTH - 2))["model"] == "m"
    assert parse_json(orjson.dumps({"input": [[1, 2]] * 500}))["input"][499] == [1, 2]
    assert parse_json(rb'{"text": "caf\u00e9 \ud83d\ude00 \u00fc"}') == {"text": "caf\u00e9 \U0001f600 \u00fc"}


def _refusal(raw: bytes, bounds: JsonBounds = BOUNDS) -> str | None:
    try:
        check_shape(raw, bounds)
    except InvalidRequest as exc:
        return exc.message
    return None


def test_shapes_past_a_bound_are_refused_before_parsing() -> None:
    small = JsonBounds(depth=4, containers=10, elements=100)
    assert (
        _refusal(b'{"messages": [' + b",".join([b"[]"] * 101) + b"]}", small)
        == "The request body has more than 100 JSON elements."
    )
    assert (
        _refusal(b'{"messages": [' + b",".join([b"[]"] * 10) + b"]}", small)
        == "The request body has more than 10 JSON arrays and objects."
    )
    assert _refusal(b'{"a": [[[[]]]]}', small) == "The request body nests deeper than 4 levels."
    assert _refusal(b'{"a": [[[]]], "b": [[[]]]}', small) is None  # depth is the deepest, not the total
    # Brackets are counted again without those inside strings, with escapes read as JSON reads them.
    assert _refusal(b'{"a": "[[[[[[[[[[[[{{{{", "b": ["]]]]]", "\\"[[[[[[["]}', small) is None
    assert _refusal(b'{"a": "\\\\", "b": [[[[]]]]}', small) == "The request body nests deeper than 4 levels."
    assert _refusal(b'{"a": "\\\\\\"[[[[[[", "b": 1}', small) is None  # an escaped backslash, then an escaped quote
    # Strings holding brackets, kept apart by brackets: too many containers is known without visiting each.
    assert (
        _refusal(b"[" + b",".join([b'["["]'] * 30) + b"]", JsonBounds(depth=4, containers=10, elements=1000))
        == "The request body has more than 10 JSON arrays and objects."
    )
    assert (
        _refusal(b'{"a": [[[[' + b"]" * 1000 + b"}", small)
        == "The request body has more than 10 JSON arrays and objects."
    )  # closers alone cost the walk too
    with pytest.raises(InvalidRequest, match="not valid JSON"):  # unterminated: within the bounds, for orjson to say
        parse_within(b'{"a": "[[[[[[[[[[[[[', small)


def test_the_costly_shape_is_refused_by_the_default_bounds() -> None:
    lists = b'{"model":"m","messages":[' + b",".join([b"[]"] * 2_660_000) + b"]}"
    deep = b'{"model":"m","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert _refusal(lists) == "The request body has more than 250000 JSON elements."
    assert _refusal(deep) == "The request body has more than 20000 JSON arrays and objects."


async def test_bad_json_is_an_openai_400() -> None:
    async with scripted_client(settings()) as client:
        for raw in (b'{"model": ', _nested(200), b"\xff" * 10):
            response = await client.post(
                "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
            )
            assert response.status_code == 400
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
