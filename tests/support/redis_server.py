"""A real redis-server for the tests: started on a free port with no persistence and a password (which must
never show in a log), killed, paused and restarted at will."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.support.tools import tool_missing

BINARY = shutil.which("redis-server")
PASSWORD = "redis-test-password-4711"


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        assert BINARY is not None
        self.port, self.workdir = free_port(), workdir
        self.url = f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        log = (self.workdir / f"redis-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(
            [
                BINARY or "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--requirepass",
                PASSWORD,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(f"AUTH {PASSWORD}\r\nPING\r\n".encode())
                    if sock.recv(32).endswith(b"+PONG\r\n"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def pause(self, paused: bool) -> None:
        """SIGSTOP: Redis stops answering but keeps its data; SIGCONT: it goes on."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP if paused else signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)  # a paused one too
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if BINARY is None:
        tool_missing("redis-server is not installed: `make tools` installs it (Debian package redis-server)")
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.kill()
