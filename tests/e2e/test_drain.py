"""SIGTERM on a real server process (the production server loop, with the scripted engine).

32 streams in flight at SIGTERM all finish and the process exits 0 before the deadline; /ready and
new requests get 503 at once. Past the deadline, what still streams ends with an SSE error event.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import httpx
import orjson

from tests.support.scripted_gateway import MODEL, start

STREAMS = 32


async def _stream(client: httpx.AsyncClient, first_event: asyncio.Event, started: list[int]) -> list[bytes]:
    body = {"model": MODEL, "prompt": "x", "max_tokens": 1000, "stream": True}
    events: list[bytes] = []
    async with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(line[6:].encode())
                if len(events) == 1:
                    started.append(1)
                    if len(started) == STREAMS:
                        first_event.set()
    return events


def _text(event: bytes) -> str:
    return str(orjson.loads(event)["choices"][0]["text"])


async def _run(url: str, proc: subprocess.Popen[bytes], probe: bool) -> tuple[list[list[bytes]], dict[str, float]]:
    """Open the streams, send SIGTERM once all are under way, optionally probe the server, collect them."""
    limits = httpx.Limits(max_connections=STREAMS + 8)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        all_started, started = asyncio.Event(), list[int]()
        streams = [asyncio.create_task(_stream(client, all_started, started)) for _ in range(STREAMS)]
        await asyncio.wait_for(all_started.wait(), 30)
        proc.send_signal(signal.SIGTERM)
        figures = {"signal_at": time.monotonic()}
        if probe:
            figures.update(await _probe(url, figures["signal_at"]))
        return list(await asyncio.gather(*streams)), figures


async def _probe(url: str, sent: float) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url, timeout=5) as probe:  # fresh connections
        while (ready := await probe.get("/ready")).status_code != 503:
            await asyncio.sleep(0.01)
        ready_after_s = time.monotonic() - sent
        refused = await probe.post("/v1/completions", json={"model": MODEL, "prompt": "late"})
        assert refused.json()["error"]["code"] == "engine_unavailable"
        assert refused.headers["connection"] == "close" and ready.json() == {"status": "not ready"}
        return {"ready_503_after_s": ready_after_s, "new_request_status": refused.status_code}


def _serve_and_signal(
    tmp_path: Path, deadline_s: float, tokens: int, probe: bool
) -> tuple[list[list[bytes]], dict[str, float], int, str]:
    proc, url = start({"drain_deadline_s": deadline_s}, {"tokens": tokens, "delay_s": 0.05}, tmp_path / "server.log")
    try:
        results, figures = asyncio.run(_run(url, proc, probe))
        code = proc.wait(timeout=deadline_s + 10)
        figures["exited_after_s"] = time.monotonic() - figures["signal_at"]
    finally:
        proc.kill()
        proc.wait()
    return results, figures, code, (tmp_path / "server.log").read_text()


def test_streams_in_flight_at_sigterm_finish_and_the_process_exits_0(tmp_path: Path) -> None:
    deadline_s = 20.0
    # 60 tokens, 50 ms apart: each stream runs about 3 s, so all 32 are mid-stream at the signal.
    results, figures, code, log = _serve_and_signal(tmp_path, deadline_s, tokens=60, probe=True)
    assert figures["ready_503_after_s"] < 0.5
    assert figures["new_request_status"] == 503
    for events in results:  # every stream whole: 60 tokens, in order, then [DONE]
        assert events[-1] == b"[DONE]"
        assert "".join(_text(e) for e in events[:-1]) == "".join(f"t{i} " for i in range(60))
    assert code == 0
    assert figures["exited_after_s"] < 6.0  # it left once the streams were done, long before the deadline
    assert '"message":"draining","in_flight":32' in log and "cutting off" not in log


def test_past_the_deadline_streams_get_an_error_event_and_the_process_exits_0(tmp_path: Path) -> None:
    deadline_s = 1.5
    # 400 tokens, 50 ms apart: 20 s a stream, far past the deadline.
    results, figures, code, log = _serve_and_signal(tmp_path, deadline_s, tokens=400, probe=False)
    for events in results:
        assert b"[DONE]" not in events
        error = orjson.loads(events[-1])["error"]
        assert error["code"] == "engine_unavailable" and "shut down" in error["message"]
        assert 1 < len(events) < 100  # some tokens came before the cut, far from all 400
    assert code == 0
    assert deadline_s <= figures["exited_after_s"] < deadline_s + 2.5
    assert "cutting off" in log
