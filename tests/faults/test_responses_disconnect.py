"""A client that leaves a stored Responses stream, over real sockets (the production server loop on the
scripted engine): the engine request stops and the stored response is left failed, never in progress."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.support.scripted_gateway import MODEL, start


def test_a_stored_stream_left_by_its_client_is_failed(tmp_path: Path) -> None:
    proc, url = start({"data_dir": str(tmp_path)}, {"tokens": 500, "delay_s": 0.02}, tmp_path / "gateway.log")
    try:
        body = {"model": MODEL, "input": "x", "stream": True}
        with httpx.stream("POST", f"{url}/v1/responses", json=body, timeout=30) as answer:
            lines = answer.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            response_id = httpx.Response(200, content=first.removeprefix("data: ")).json()["response"]["id"]
            for line in lines:
                if "response.output_text.delta" in line:
                    break  # the client leaves mid-answer
        deadline = time.monotonic() + 20
        status = ""
        while time.monotonic() < deadline and status != "failed":
            stored = httpx.get(f"{url}/v1/responses/{response_id}", timeout=5).json()
            status = stored["status"]
            time.sleep(0.05)
        assert status == "failed" and stored["error"]["code"] == "server_error"
        [message] = stored["output"]  # nothing half written: the text so far, marked incomplete
        assert message["status"] == "incomplete" and message["content"][0]["text"].startswith("t0 ")
    finally:
        proc.kill()
        proc.wait()
