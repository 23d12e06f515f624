"""Request ids in and out, and the JSON access log: what it holds, and what it never holds."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import orjson
import pytest

from gateway.keys import digest
from gateway.observability.logging import JsonFormatter, configure_logging, redact
from tests.support.scripted_app import MODEL, chat, scripted_client, settings
from tests.support.scripted_engine import Script, ScriptedAdapter

KEY = "sk-log-test-0123456789"
PROMPT = "a prompt that is nobody's business 4711"


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Every record of every logger, as the server writes it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(old_level)


def _records(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


async def test_request_ids_in_and_out() -> None:
    async with scripted_client(settings()) as client:
        given = await client.get("/v1/models", headers={"x-request-id": "req-42.a:b"})
        assert given.headers["x-request-id"] == "req-42.a:b"
        for bad in ("x" * 129, "has space", 'quote"d'):
            replaced = await client.get("/v1/models", headers={"x-request-id": bad})
            assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["x-request-id"])
        ids = {(await client.get(path)).headers["x-request-id"] for path in ("/health", "/nothing", "/v1/models")}
        assert len(ids) == 3


async def test_access_log_holds_id_model_status_latency_and_no_content(log_lines: io.StringIO) -> None:
    async with scripted_client(settings(api_keys=KEY), headers={"authorization": f"Bearer {KEY}"}) as client:
        body = chat(messages=[{"role": "user", "content": PROMPT}], max_tokens=4)
        ok = await client.post("/v1/chat/completions", json=body, headers={"x-request-id": "req-ok"})
        answer = ok.json()["choices"][0]["message"]["content"]
        await client.post("/v1/chat/completions", json={**body, "stream": True}, headers={"x-request-id": "req-sse"})
        await client.get("/v1/models", headers={"authorization": "Bearer sk-wrong-key", "x-request-id": "req-401"})
    access = {r["request_id"]: r for r in _records(log_lines) if r["logger"] == "tokenyard.access"}
    assert {k: access["req-ok"][k] for k in ("method", "path", "status", "model", "key", "level", "message")} == {
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
        "model": MODEL,
        "key": "key-" + digest(KEY).hex()[:12],
        "level": "info",
        "message": "request",
    }
    assert 0 < access["req-ok"]["latency_ms"] < 5000  # type: ignore[operator]
    assert (access["req-sse"]["status"], access["req-401"]["status"], access["req-401"]["key"]) == (200, 401, None)
    text = log_lines.getvalue()
    for secret in (KEY, "sk-wrong-key", PROMPT, answer, "authorization"):
        assert secret not in text


async def test_an_unexpected_error_is_a_500_with_its_id(log_lines: io.StringIO) -> None:
    adapter = ScriptedAdapter(MODEL, Script(fail_before=RuntimeError("internal detail")))
    async with scripted_client(settings(), adapter) as client:
        response = await client.post(
            "/v1/completions", json={"model": MODEL, "prompt": "x"}, headers={"x-request-id": "req-boom"}
        )
    assert response.status_code == 500 and response.headers["x-request-id"] == "req-boom"
    assert response.json()["error"]["type"] == "api_error" and "internal detail" not in response.text
    records = _records(log_lines)
    assert any(r.get("request_id") == "req-boom" and "internal detail" in str(r.get("exc")) for r in records)
    assert [r["status"] for r in records if r["logger"] == "tokenyard.access"] == [500]


def test_formatter_and_redaction() -> None:
    assert redact("Authorization: Bearer sk-abc.def-123, next") == "Authorization: Bearer [redacted], next"
    assert redact("bearer\tXYZ") == "bearer\t[redacted]"
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    configure_logging("info", stream)
    try:
        logger = logging.getLogger("tokenyard.test")
        logger.debug("hidden")
        try:
            raise ValueError("header was Bearer sk-leaky-key")
        except ValueError:
            logger.exception("failed for %s", "Bearer sk-other", extra={"fields": {"request_id": "r1", "n": 2}})
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    [record] = _records(stream)
    assert record["message"] == "failed for Bearer [redacted]" and record["level"] == "error"
    assert (record["request_id"], record["n"], record["logger"]) == ("r1", 2, "tokenyard.test")
    assert "ValueError" in record["exc"] and "sk-leaky-key" not in record["exc"]  # type: ignore[operator]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(record["ts"]))


@pytest.mark.parametrize(
    ("given", "kept"),
    [(b"600.0", 600.0), (b"3", 3.0), (b"0", None), (b"-1", None), (b"1e9", None), (b"inf", None), (b"nan", None)],
)
def test_the_clients_read_timeout_is_kept_only_when_it_is_a_plain_positive_number(
    given: bytes, kept: float | None
) -> None:
    from engine_adapters.base import Forwarded
    from gateway.middleware.request_log import forwarded_from

    forwarded = forwarded_from({"type": "http", "headers": [(b"x-stainless-read-timeout", given)]}, "rid")
    assert forwarded.read_timeout_s == kept
    assert forwarded.headers() == {"x-request-id": "rid"}  # the router keeps it; it is never passed on
    assert Forwarded("rid").read_timeout_s is None
