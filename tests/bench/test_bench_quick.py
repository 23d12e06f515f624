"""`make bench-quick` as a smoke check: it runs end to end and writes well-formed results. No timing asserts."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("psutil")

ROOT = Path(__file__).resolve().parents[2]


def free_port_base() -> int:
    """A base port whose stub (base+1) and front (base+11, base+12) ports are all free now."""
    for _ in range(50):
        base = random.randrange(20000, 60000, 100)
        try:
            for port in (base + 1, base + 11, base + 12):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    pytest.skip("no free port range")


def test_bench_quick_writes_results(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "bench.router_overhead",
        "--quick",
        "--rounds",
        "1",
        "--duration",
        "0.3",
        "--concurrency",
        "2",
        "--modes",
        "stream-burst",
        "nonstream",
        "--warmup",
        "1",
        "--port-base",
        str(free_port_base()),
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    [path] = tmp_path.glob("*-router-overhead-quick.json")
    result = json.loads(path.read_text())
    assert result["suite"] == "router-overhead"
    assert {"cores", "cpu", "python"} <= result["machine"].keys()
    assert result["failed_fronts"] == {}
    fronts = {run["front"] for run in result["runs"]}
    assert fronts == {"direct", "tokenyard", "naive"}
    assert len(result["runs"]) == 3 * 2  # fronts x modes
    for run in result["runs"]:
        # Every front relayed whole answers: no errors and no stream cut short.
        assert run["requests"] > 0 and run["errors"] == 0 and run["short"] == 0, run
        if run["front"] != "direct":
            assert run["front_cpu_s"] >= 0 and run["rss_peak_mb"] > 0
    assert {row["front"] for row in result["summary"]} == fronts
    table = path.with_suffix(".md").read_text()
    assert "| tokenyard |" in table and "| naive |" in table


def test_the_bare_floors_relay_whole_answers(tmp_path: Path) -> None:
    """The two floors that Suite 2 measures beside the fronts pass every stream and body on whole."""
    cmd = [
        sys.executable,
        "-m",
        "bench.router_overhead",
        "--fronts",
        "direct",
        "bare-callback",
        "bare-asgi",
        "--rounds",
        "1",
        "--duration",
        "0.3",
        "--concurrency",
        "2",
        "--modes",
        "stream-burst",
        "nonstream",
        "--warmup",
        "1",
        "--open-streams",
        "0",
        "--port-base",
        str(free_port_base()),
        "--out",
        str(tmp_path),
        "--tag",
        "floors",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    [path] = tmp_path.glob("*-floors.json")
    result = json.loads(path.read_text())
    assert result["failed_fronts"] == {}
    assert {run["front"] for run in result["runs"]} == {"direct", "bare-callback", "bare-asgi"}
    for run in result["runs"]:
        assert run["requests"] > 0 and run["errors"] == 0 and run["short"] == 0, run
