"""Real processes on loopback: scripted OpenAI-compatible engines and a tokenyard router in front of them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import ROOT, free_port
from tests.support.waiting import wait_until

MODEL = "scripted"


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Engine:
    """One scripted engine process (tests.support.scripted_upstream)."""

    def __init__(self, workdir: Path, tokens: int, delay_ms: float, fault: str = "none") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [
            "--port",
            str(self.port),
            "--model",
            MODEL,
            "--tokens",
            str(tokens),
            "--delay-ms",
            str(delay_ms),
            "--fault",
            fault,
        ]
        self.log_path = workdir / f"engine-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Engine:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.scripted_upstream", *self.args],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_ready(self, timeout_s: float = 30) -> None:
        wait_until(
            lambda: httpx.get(f"{self.url}/health", timeout=1).status_code == 200,
            timeout_s,
            f"scripted engine on {self.port}",
        )

    def kill(self) -> None:
        """kill -9: no goodbye, the kernel closes its sockets."""
        if self.proc is not None:
            _stop(self.proc, signal.SIGKILL)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def stats(self) -> dict[str, int]:
        data: dict[str, int] = httpx.get(f"{self.url}/stats", timeout=2).json()
        return data

    def requests(self) -> list[dict[str, Any]]:
        """The last POSTs this engine received: path and headers (tests.support.scripted_upstream)."""
        data: list[dict[str, Any]] = httpx.get(f"{self.url}/requests", timeout=2).json()
        return data

    def control(self, **script: Any) -> None:
        httpx.post(f"{self.url}/control", json=script, timeout=2).raise_for_status()


class Router:
    """`python -m gateway serve --config router.yaml`: one route over the given instance URLs; `config` adds
    top-level settings (keys, limits), `route` the route's own (LoRA adapters)."""

    def __init__(
        self,
        workdir: Path,
        upstreams: list[str],
        policy: str = "least-loaded",
        log_level: str = "warning",
        aliases: tuple[str, ...] = (),
        config: dict[str, Any] | None = None,
        route: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        **router: Any,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / f"router-{self.port}.yaml"
        # Timeouts with room to spare: the machine running the tests may be busy with other work.
        self.settings = {
            "connect_timeout_s": 0.5,
            "first_token_timeout_s": 5,
            "idle_timeout_s": 3,
            "health_interval_s": 0.5,
            "breaker_failures": 3,
            "breaker_cooldown_s": 2,
            "retry_backoff_s": 0.02,
            "reload_interval_s": 0.2,
            **router,
        }
        self.policy, self.log_level, self.aliases, self.extra = policy, log_level, list(aliases), config or {}
        self.route = route or {}  # more of the route's settings
        self.env = env or {}  # environment variables over the test run's (which outrank the config file)
        self.write_config(upstreams)
        self.log_path = workdir / f"router-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self, upstreams: list[str]) -> None:
        route = {"name": MODEL, "policy": self.policy, "upstreams": upstreams, "aliases": self.aliases, **self.route}
        config = {"routes": [route], "router": self.settings, "log_level": self.log_level, **self.extra}
        self.config.write_text(yaml.safe_dump(config))

    def start(self) -> Router:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(self.config), "--port", str(self.port)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        return self

    def wait_ready(self, timeout_s: float = 60) -> None:
        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log_path.read_text()[-3000:]
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200

        wait_until(up, timeout_s, "router")

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def metric(self, name: str, upstream: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=2).text
        pattern = rf'^{re.escape(name)}\{{[^}}]*upstream="{re.escape(upstream)}"[^}}]*\}} (\S+)$'
        match = re.search(pattern, text, re.M)
        assert match, f"{name} for {upstream} is missing"
        return float(match.group(1))


class Fleet:
    """Everything a test started, stopped at its end whatever happened."""

    def __init__(self, workdir: Path, splice: bool = True) -> None:
        self.workdir = workdir
        self.splice = splice  # the routers' router.splice (engine_adapters.splice): tests run in both modes
        self.engines: list[Engine] = []
        self.routers: list[Router] = []

    def start(
        self,
        count: int,
        tokens: int = 16,
        delay_ms: float = 10,
        config: dict[str, Any] | None = None,
        route: dict[str, Any] | None = None,
        script: dict[str, Any] | None = None,
        **router: Any,
    ) -> tuple[list[Engine], Router]:
        """`script`: each engine's control fields, set before the router starts (so its first health
        check already sees them)."""
        engines = [Engine(self.workdir, tokens, delay_ms).start() for _ in range(count)]
        self.engines += engines
        if script:
            for engine in engines:
                engine.wait_ready()
                engine.control(**script)
        router = {"splice": self.splice, **router}
        router_proc = Router(self.workdir, [e.url for e in engines], config=config, route=route, **router).start()
        self.routers.append(router_proc)
        for engine in engines:
            engine.wait_ready()
        router_proc.wait_ready()
        return engines, router_proc

    def stop(self) -> None:
        for router in self.routers:
            router.stop()
        for engine in self.engines:
            engine.stop()
