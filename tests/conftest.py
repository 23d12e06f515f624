"""One real tokenyard server (real vLLM engines on the default models) per test session.

Set TOKENYARD_TEST_URL to reuse a server you already started with `make serve` (and TOKENYARD_TEST_LOG to its log).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.support import lora_fixture

ROOT = Path(__file__).resolve().parent.parent
TEXT_MODEL = "gemma-3-270m"
EMBED_MODEL = "all-MiniLM-L6-v2"
START_TIMEOUT_S = 900
# Every app and server the tests start keeps its SQLite response store in one temporary data dir, never in
# the home directory (a test that needs its own store sets data_dir or store.url itself).
os.environ.setdefault("TOKENYARD_DATA_DIR", tempfile.mkdtemp(prefix="tokenyard-test-data-"))


@dataclass
class Server:
    url: str
    log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1/"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None, log_path: Path | None, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-4000:] if log_path else ""
            raise RuntimeError(f"server exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"server at {url} not ready after {timeout_s}s")


def start_server(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", *args],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its own process group: kill_server takes its engine processes with it
        )


def kill_server(proc: subprocess.Popen[bytes]) -> int:
    """kill -9 the server and every process it started (vLLM's EngineCore and workers), as a pod's crash
    does: killed alone, the server would leave its engine running, holding gigabytes, to the end of the suite."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait(timeout=30)


def stop_server(proc: subprocess.Popen[bytes], timeout_s: float = 60) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return kill_server(proc)


def starts_the_engine(item: pytest.Item) -> bool:
    """Whether a test starts the real vLLM engine: through the session's `server` (itself or a fixture that
    takes it), or in its module, through start_server (`gateway serve` on real models)."""
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.get("server", ()) if info is not None else ()
    if defs and defs[-1].func.__module__ == __name__:  # the closest `server`, as the test receives it
        return True
    module = getattr(item, "module", None)
    return module is not None and getattr(module, "start_server", None) is start_server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that starts the real engine is marked `engine`, so `-m "not engine"` runs none of them."""
    for item in items:
        if item.get_closest_marker("engine") is None and starts_the_engine(item):
            item.add_marker(pytest.mark.engine)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if url := os.environ.get("TOKENYARD_TEST_URL"):
        wait_ready(url, None, None, 30)
        log = os.environ.get("TOKENYARD_TEST_LOG")  # that server's log, for the tests that read it
        yield Server(url.rstrip("/"), Path(log) if log else None)
        return
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    # The default models plus a tiny LoRA adapter on the text model (tests/e2e/test_lora.py), built
    # first (~15 s) so one engine start serves both: a second LoRA-only engine would cost ~90 s more.
    env = lora_fixture.server_env(tmp_path_factory.mktemp("lora-adapter"))
    proc = start_server(["--port", str(port)], log_path, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log_path, START_TIMEOUT_S)
        yield Server(url, log_path)
    finally:
        stop_server(proc)


@pytest.fixture(scope="session")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server.base_url, api_key="EMPTY", max_retries=0, timeout=120, _strict_response_validation=True
    )


@pytest.fixture(scope="session")
def loose_client(server: Server) -> openai.OpenAI:
    """For streamed legacy completions only: the SDK declares finish_reason non-null, OpenAI streams null."""
    return openai.OpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as session:
        yield session
