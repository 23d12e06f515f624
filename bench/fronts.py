"""The fronts of Suite 2: how each router or gateway is started in front of the stub upstream.

Every front gets the same job: one route, model `stub`, one upstream, round-robin, quiet logs. Each is a
plain process (pinned with taskset by the caller); `ready()` waits until it relays a real request.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import peers

ROOT = Path(__file__).resolve().parent.parent
MODEL = "stub"


@dataclass
class Front:
    name: str
    port: int
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # config files to write first: path -> text
    version: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request (a client key)
    helpers: list[list[str]] = field(default_factory=list)  # processes it needs, started first (Redis, a sink)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def tokenyard(
    port: int, upstream: str, workdir: Path, name: str = "tokenyard", extra: str = "", limits: str = ""
) -> Front:
    config = workdir / f"{name}-router.yaml"
    # Admission raised past the 1,000-stream probe, as the peers run with their own caps off.
    text = (
        f"host: 127.0.0.1\nport: {port}\nlog_level: warning\nlimits:\n  max_in_flight: 2048\n{limits}"
        f"routes:\n  - name: {MODEL}\n    policy: round-robin\n    upstreams:\n      - {upstream}\n{extra}"
    )
    return Front(
        name,
        port,
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        files={str(config): text},
        version=_git_version(),
    )


def tokenyard_traced(port: int, upstream: str, workdir: Path) -> Front:
    """Tracing on, every request sampled, spans exported over OTLP/HTTP to a local sink (bench.otlp_sink)."""
    front = tokenyard(port, upstream, workdir, "tokenyard-traced", "tracing:\n  enabled: true\n")
    front.env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port + 200}", "OTEL_TRACES_SAMPLER": "always_on"}
    front.helpers = [[sys.executable, "-m", "bench.otlp_sink", "--port", str(port + 200)]]
    return front


BENCH_KEY = "sk-bench-0123456789"
# Limits that never refuse, so that every request pays the whole check: its buckets and its budgets.
_LIMITS = (
    "  requests_per_minute: 1000000000\n  tokens_per_minute: 1000000000000\n"
    "  tokens_per_day: 1000000000000\n  tokens_per_month: 1000000000000\n"
)
_KEYS = f"api_keys:\n  - key: {BENCH_KEY}\n    name: bench\n"


def tokenyard_limits(port: int, upstream: str, workdir: Path) -> Front:
    """A client key, rate limits and budgets, kept in memory."""
    front = tokenyard(port, upstream, workdir, "tokenyard-limits", _KEYS, _LIMITS)
    front.headers = {"authorization": f"Bearer {BENCH_KEY}"}
    return front


def tokenyard_redis(port: int, upstream: str, workdir: Path) -> Front:
    """The same limits kept in a local Redis (limits.backend redis), as router replicas share them."""
    redis = port + 100
    limits = f"{_LIMITS}  backend: redis\n  redis_url: redis://127.0.0.1:{redis}/0\n"
    front = tokenyard(port, upstream, workdir, "tokenyard-redis", _KEYS, limits)
    front.headers = {"authorization": f"Bearer {BENCH_KEY}"}
    front.helpers = [
        [
            "redis-server",
            "--port",
            str(redis),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ]
    ]
    return front


def naive(port: int, upstream: str, workdir: Path) -> Front:
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.naive_proxy:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    return Front("naive", port, cmd, env={"NAIVE_UPSTREAM": upstream}, version="fastapi+httpx")


def bare_callback(port: int, upstream: str, workdir: Path) -> Front:
    cmd = [sys.executable, "-m", "bench.bare_relay", "--port", str(port), "--upstream", upstream]
    return Front("bare-callback", port, cmd, version="asyncio+httptools, no ASGI")


def bare_asgi(port: int, upstream: str, workdir: Path) -> Front:
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.bare_relay:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    return Front("bare-asgi", port, cmd, env={"BARE_UPSTREAM": upstream}, version="raw ASGI on uvicorn + h1")


def litellm(port: int, upstream: str, workdir: Path) -> Front:
    config = workdir / "litellm.yaml"
    text = (
        f"model_list:\n  - model_name: {MODEL}\n    litellm_params:\n      model: openai/{MODEL}\n"
        f"      api_base: {upstream}/v1\n      api_key: sk-bench\n"
        "litellm_settings:\n  set_verbose: false\n  telemetry: false\n"
    )
    cmd = [
        str(peers.venv("litellm") / "bin" / "litellm"),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"}
    return Front("litellm", port, cmd, env=env, files={str(config): text}, version=peers.PEERS["litellm"].version)


def vllm_router(port: int, upstream: str, workdir: Path) -> Front:
    cmd = [
        str(peers.venv("vllm-router") / "bin" / "vllm-router"),
        "--worker-urls",
        upstream,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--policy",
        "round_robin",
        "--log-level",
        "warning",
        "--prometheus-host",
        "127.0.0.1",
        "--prometheus-port",
        str(port + 40),
    ]
    return Front("vllm-router", port, cmd, version=peers.PEERS["vllm-router"].version)


def sglang_router(port: int, upstream: str, workdir: Path) -> Front:
    cmd = [
        str(peers.venv("sglang-router") / "bin" / "sglang-router"),
        "launch",
        "--worker-urls",
        upstream,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--policy",
        "round_robin",
        "--log-level",
        "warn",
        "--max-concurrent-requests",
        "-1",
        "--prometheus-host",
        "127.0.0.1",
        "--prometheus-port",
        str(port + 40),
    ]
    return Front("sglang-router", port, cmd, version=peers.PEERS["sglang-router"].version)


BUILDERS = {
    "tokenyard": tokenyard,
    "tokenyard-traced": tokenyard_traced,
    "tokenyard-limits": tokenyard_limits,
    "tokenyard-redis": tokenyard_redis,
    "naive": naive,
    "litellm": litellm,
    "vllm-router": vllm_router,
    "sglang-router": sglang_router,
    "bare-callback": bare_callback,
    "bare-asgi": bare_asgi,
}
PEER_FRONTS = {"litellm", "vllm-router", "sglang-router"}


def _git_version() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def start(front: Front, core: int | None, log: Path) -> subprocess.Popen[bytes]:
    for path, text in front.files.items():
        Path(path).write_text(text)
    pin = ["taskset", "-c", str(core)] if core is not None else []
    return subprocess.Popen(
        [*pin, *front.cmd],
        cwd=ROOT,
        env={**os.environ, **front.env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def ready(front: Front, proc: subprocess.Popen[bytes], timeout_s: float = 180) -> float:
    """Seconds until the front relays a whole request to the stub."""
    started = time.monotonic()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    while time.monotonic() - started < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"{front.name} exited with {proc.returncode}")
        try:
            if (
                httpx.post(f"{front.url}/v1/chat/completions", json=body, headers=front.headers, timeout=5).status_code
                == 200
            ):
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{front.name} not ready after {timeout_s}s")
