"""When the real engine dies: the stream in flight gets an SSE error event, then every request a 503."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import openai
import orjson
import psutil
import pytest

from tests.conftest import TEXT_MODEL, free_port, start_server, stop_server, wait_ready


def _engine_core(server_pid: int) -> psutil.Process:
    for child in psutil.Process(server_pid).children(recursive=True):
        if "EngineCore" in child.name() or any("EngineCore" in part for part in child.cmdline()):
            return child
    raise AssertionError("no EngineCore process under the server")


@pytest.mark.engine
def test_engine_death_becomes_an_error_event_then_503(tmp_path: Path) -> None:
    port, log_path = free_port(), tmp_path / "server.log"
    args = ["--port", str(port), "--model", "builtin:gemma3-270m", "--served-model-name", TEXT_MODEL,
            "--dtype", "bfloat16", "--max-model-len", "512"]
    proc = start_server(args, log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log_path, 900)
        body = {"model": TEXT_MODEL, "prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True,
                "stream": True}
        events: list[bytes] = []
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
            assert response.status_code == 200
            lines = (line for line in response.iter_lines() if line.startswith("data: "))
            events += [next(lines).encode() for _ in range(3)]
            _engine_core(proc.pid).send_signal(signal.SIGKILL)
            killed = time.monotonic()
            events += [line.encode() for line in lines]
        assert time.monotonic() - killed < 10
        last = events[-1]
        assert last != b"data: [DONE]"
        error = orjson.loads(last[len(b"data: "):])["error"]
        assert error["code"] == "engine_unavailable" and set(error) == {"message", "type", "param", "code"}

        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="EMPTY", max_retries=0, _strict_response_validation=True)
        with pytest.raises(openai.InternalServerError) as err:
            sdk.completions.create(model=TEXT_MODEL, prompt="Hello", max_tokens=4)
        assert err.value.status_code == 503 and err.value.code == "engine_unavailable"
        assert httpx.get(f"{url}/ready").status_code == 503
        assert httpx.get(f"{url}/health").status_code == 200  # the process is alive; the engine is not
        assert "Traceback" not in err.value.response.text
    finally:
        stop_server(proc)
