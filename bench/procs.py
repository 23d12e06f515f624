"""What the benchmarks share about the servers they start: waiting until one answers."""

from __future__ import annotations

import subprocess
import time

import httpx


def wait_answering(
    url: str,
    proc: subprocess.Popen[bytes],
    path: str,
    *,
    started: float | None = None,
    timeout_s: float = 900,
    interval_s: float = 1.0,
) -> float:
    """Seconds from `started` (default: now) until GET `url + path` answers 200; fails if `proc` exits first."""
    started = time.monotonic() if started is None else started
    while time.monotonic() - started < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}{path}", timeout=5).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(interval_s)
    raise TimeoutError(url)
