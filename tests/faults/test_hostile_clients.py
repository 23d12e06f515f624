"""What a client controls must not grow what the router keeps or writes: metric series, log lines."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.conftest import free_port
from tests.faults.harness import MODEL, Fleet, Router
from tests.support.waiting import wait_until

HUGE = 1024 * 1024


def _series(text: str) -> list[str]:
    """Every sample's name and labels, without its value."""
    return sorted(line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#"))


def _bodies(model: str) -> list[tuple[str, dict[str, Any]]]:
    messages = [{"role": "user", "content": "hi"}]
    return [
        ("/v1/chat/completions", {"model": model, "messages": messages, "max_tokens": 2}),
        ("/v1/chat/completions", {"model": model, "messages": messages, "max_tokens": 2, "stream": True}),
        ("/v1/completions", {"model": model, "prompt": "hi", "max_tokens": 2}),
        ("/v1/responses", {"model": model, "input": "hi", "max_output_tokens": 2}),
        ("/v1/embeddings", {"model": model, "input": "hi"}),
        ("/tokenize", {"model": model, "prompt": "hi"}),
    ]


def _access(router: Router) -> list[dict[str, Any]]:
    lines = [orjson.loads(line) for line in router.log_path.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("logger") == "tokenyard.access"]


async def test_unknown_and_huge_model_names_add_no_series_and_short_log_lines(fleet: Fleet) -> None:
    _, router = fleet.start(1, tokens=2, delay_ms=1, log_level="info")
    async with httpx.AsyncClient(base_url=router.url, timeout=30) as client:
        for path, body in _bodies(MODEL)[:4]:  # the served model's own series exist from here on
            assert (await client.post(path, json=body)).status_code == 200
        for path, body in _bodies("warm-up"):  # and so do the fixed bucket's for names not served
            await client.post(path, json=body)
        before = (await client.get("/metrics")).text
        names = [f"no-such-model-{i}" for i in range(100)] + [f"{i}{'x' * HUGE}" for i in range(3)]
        statuses = set()
        for name in names:
            requests = [client.post(path, json=body) for path, body in _bodies(name)]
            statuses |= {response.status_code for response in await asyncio.gather(*requests)}
        after = (await client.get("/metrics")).text
    assert statuses == {404}
    assert _series(after) == _series(before)
    assert abs(len(after) - len(before)) < 1024
    huge = [line for line in _access(router) if (line["model"] or "").endswith(f"…[{HUGE - 255} more chars]")]
    assert len(huge) == 3 * len(_bodies("")) and all(len(line["model"]) < 300 for line in huge)
    assert max(len(line) for line in router.log_path.read_text().splitlines()) < 8192


async def test_a_long_path_is_logged_clipped(fleet: Fleet) -> None:
    _, router = fleet.start(1, log_level="info")
    path = "/v1/" + "p" * 20_000
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        response = await client.get(path, headers={"x-request-id": "long-path-1"})
    assert response.status_code == 404
    line = next(a for a in _access(router) if a["request_id"] == "long-path-1")
    assert line["path"] == path[:256] + f"…[{len(path) - 256} more chars]"


def test_a_malformed_chunked_body_is_logged_as_a_400_with_its_id(fleet: Fleet) -> None:
    _, router = fleet.start(1, log_level="info")
    head = (
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"transfer-encoding: chunked\r\nx-request-id: bad-chunk-1\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(head + b'5\r\n{"mod\r\nzz-not-a-size\r\n')
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")
    wait_until(lambda: any(a["request_id"] == "bad-chunk-1" for a in _access(router)), 5, "the access log line")
    line = next(a for a in _access(router) if a["request_id"] == "bad-chunk-1")
    assert line["status"] == 400


def test_a_router_refuses_an_upstream_url_with_credentials_and_never_prints_them(tmp_path: Path) -> None:
    engine_port = free_port()
    router = Router(tmp_path, [f"http://admin:s3cretpw@127.0.0.1:{engine_port}"], log_level="debug").start()
    try:
        assert router.proc is not None
        code = router.proc.wait(30)
    finally:
        router.stop()
    output = router.log_path.read_text()
    assert code != 0
    assert f"http://127.0.0.1:{engine_port}: a URL must not carry credentials" in output and "api_key" in output
    assert "s3cretpw" not in output
