"""Engine-mode instances on the real vLLM engine and routers in front of them, each in its own process.

A router-facing e2e module starts its engines once (a minute or two each on CPU) and two routers over the
same instances, one with `router.splice: true` and one with `false`; its tests take the `router` fixture
(tests/e2e/conftest.py), which runs each of them once per router, ids "splice" and "asgi".
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import free_port, kill_server, start_server, stop_server, wait_ready

ENGINE_START_TIMEOUT_S = 900
ROUTER_START_TIMEOUT_S = 60
ROUTER_MODES = {"splice": True, "asgi": False}  # the router fixture's ids -> router.splice


def engine_env(slot: int, count: int) -> dict[str, str]:
    """A share of this machine's cores for each engine, so they do not fight over the same ones."""
    cores = sorted(os.sched_getaffinity(0))
    share = cores[slot::count] or cores
    return {"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, share)), "VLLM_CPU_KVCACHE_SPACE": "1"}


class EngineFleet:
    """What a module started: `instances` (engine-mode URLs) and `routers` (name -> URL); stop() ends all."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.instances: list[str] = []
        self.routers: dict[str, str] = {}
        self._procs: list[subprocess.Popen[bytes]] = []
        self._by_url: dict[str, subprocess.Popen[bytes]] = {}

    def _start(
        self, name: str, args: list[str], timeout_s: float, env: dict[str, str] | None = None
    ) -> tuple[str, Callable[[], None]]:
        port, log_path = free_port(), self.workdir / f"{name}.log"
        proc = start_server([*args, "--port", str(port)], log_path, env)
        self._procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        self._by_url[url] = proc
        return url, lambda: wait_ready(url, proc, log_path, timeout_s)

    def start_engines(
        self, count: int, args: Callable[[int], list[str]] = lambda slot: [], env: dict[str, str] | None = None
    ) -> list[str]:
        """`count` engine-mode instances, started at once; `args(slot)` their flags, `env` on top of their
        share of the cores. Returns their URLs once all are ready."""
        started = [
            self._start(f"engine-{slot}", args(slot), ENGINE_START_TIMEOUT_S, engine_env(slot, count) | (env or {}))
            for slot in range(count)
        ]
        for _, ready in started:
            ready()
        urls = [url for url, _ in started]
        self.instances += urls
        return urls

    def start_routers(self, routes: list[dict[str, Any]], **router: Any) -> dict[str, str]:
        """One router per mode of ROUTER_MODES with the same routes and router settings, but router.splice."""
        started = {}
        for mode, splice in ROUTER_MODES.items():
            config = self.workdir / f"router-{mode}.yaml"
            config.write_text(yaml.safe_dump({"routes": routes, "router": {**router, "splice": splice}}))
            started[mode] = self._start(f"router-{mode}", ["--config", str(config)], ROUTER_START_TIMEOUT_S)
        for _, ready in started.values():
            ready()
        self.routers.update({mode: url for mode, (url, _) in started.items()})
        return self.routers

    def kill(self, url: str) -> None:
        """kill -9 the process serving `url` and its engine: no goodbye, the kernel closes its sockets."""
        kill_server(self._by_url[url])

    def stop(self) -> None:
        for proc in reversed(self._procs):  # routers first
            stop_server(proc)


@contextmanager
def engine_fleet(workdir: Path) -> Iterator[EngineFleet]:
    fleet = EngineFleet(workdir)
    try:
        yield fleet
    finally:
        fleet.stop()
