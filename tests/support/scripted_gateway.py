"""create_app with the scripted engine, served by gateway.server.serve: the production server loop
(signals, drain, slow-client timeouts, TLS, JSON logs) over real sockets, without a real engine.

For end-to-end tests of the gateway's own logic only, never as proof of serving a model:

    python -m tests.support.scripted_gateway '{"port": 8123, "api_keys": "k1"}' '{"tokens": 20, "delay_s": 0.05}'

The settings may name `scripted_models` (a list): more scripted models served beside "scripted", each with
the same script.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from engine_adapters.base import EngineAdapter
from gateway.app import create_app
from gateway.observability.logging import configure_logging
from gateway.server import serve
from gateway.settings import Settings
from tests.conftest import ROOT, free_port, wait_ready
from tests.support.scripted_engine import Script, ScriptedAdapter

MODEL = "scripted"


def start(
    settings: dict[str, Any], script: dict[str, Any], log_path: Path, scheme: str = "http"
) -> tuple[subprocess.Popen[bytes], str]:
    """Start one in a subprocess and wait until it is ready; returns it and its base URL."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "tests.support.scripted_gateway",
        json.dumps({"port": port, **settings}),
        json.dumps(script),
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"{scheme}://127.0.0.1:{port}"
    if scheme == "http":
        wait_ready(url, proc, log_path, 60)
    return proc, url


def main(argv: list[str]) -> int:
    given = json.loads(argv[0])
    names = [MODEL, *given.pop("scripted_models", [])]
    settings = Settings(models=[], **given)
    script = json.loads(argv[1])
    adapters = [ScriptedAdapter(name, Script(**script)) for name in names]

    async def factory(_: Settings) -> dict[str, EngineAdapter]:
        return {adapter.name: adapter for adapter in adapters}

    configure_logging(settings.log_level)
    serve(create_app(settings, adapter_factory=factory), settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
