"""When the real engine dies: the stream in flight gets an SSE error event, every request a 503, /health a 503,
and the process exits non-zero after engine_dead_exit_s, having logged why."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import openai
import orjson
import psutil
import pytest

from gateway.lifecycle import ENGINE_DEAD_EXIT_CODE
from tests.conftest import TEXT_MODEL, free_port, start_server, stop_server, wait_ready

EXIT_AFTER_S = 5  # the default engine_dead_exit_s


def _engine_core(server_pid: int) -> psutil.Process:
    for child in psutil.Process(server_pid).children(recursive=True):
        if "EngineCore" in child.name() or any("EngineCore" in part for part in child.cmdline()):
            return child
    raise AssertionError("no EngineCore process under the server")


def _log_entries(log_path: Path) -> list[dict[str, object]]:
    """The server's JSON log lines (vLLM's own lines are not JSON)."""
    entries = []
    for line in log_path.read_bytes().splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


@pytest.mark.engine
def test_engine_death_becomes_an_error_event_then_503_then_an_exit(tmp_path: Path) -> None:
    port, log_path = free_port(), tmp_path / "server.log"
    args = [
        "--port",
        str(port),
        "--model",
        "builtin:gemma3-270m",
        "--served-model-name",
        TEXT_MODEL,
        "--dtype",
        "bfloat16",
        "--max-model-len",
        "512",
    ]
    proc = start_server(args, log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log_path, 900)
        body = {
            "model": TEXT_MODEL,
            "prompt": "Once upon a time",
            "max_tokens": 400,
            "ignore_eos": True,
            "stream": True,
        }
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
        error = orjson.loads(last[len(b"data: ") :])["error"]
        assert error["code"] == "engine_unavailable" and set(error) == {"message", "type", "param", "code"}

        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="EMPTY", max_retries=0, _strict_response_validation=True)
        with pytest.raises(openai.InternalServerError) as err:
            sdk.completions.create(model=TEXT_MODEL, prompt="Hello", max_tokens=4)
        assert err.value.status_code == 503 and err.value.code == "engine_unavailable"
        assert httpx.get(f"{url}/ready").status_code == 503
        health = httpx.get(f"{url}/health")  # liveness: the engine is dead and only a restart mends it
        assert health.status_code == 503 and health.json()["models"] == [TEXT_MODEL]
        assert "Traceback" not in err.value.response.text

        code = proc.wait(timeout=EXIT_AFTER_S + 10)
        assert code == ENGINE_DEAD_EXIT_CODE != 0
        assert time.monotonic() - killed < EXIT_AFTER_S + 10
        errors = [
            entry
            for entry in _log_entries(log_path)
            if entry.get("level") == "error" and entry.get("logger") == "gateway.lifecycle"
        ]
        assert len(errors) == 1 and errors[0]["model"] == TEXT_MODEL
        assert errors[0]["cause"] == "EngineCore was killed by SIGKILL"
        assert errors[0]["message"] == (
            f"engine for model {TEXT_MODEL} died: EngineCore was killed by SIGKILL; exiting in {EXIT_AFTER_S} s"
        )
    finally:
        stop_server(proc)
