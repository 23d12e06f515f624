"""Suite 4 at its smallest: four simulated instances (one process) behind the real router (its own process)
with policy kv, driven by the openai SDK; then the suite itself, at four instances, end to end."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from bench.fleet.server import MODEL
from tests.conftest import ROOT, free_port, start_server, stop_server

INSTANCES = 4
# The suite's ports past its instances' for 4 instances without churn (bench.fleet.suite): the router, and two
# KV-event ports an instance.
SUITE_PORTS = (500, *range(2000, 2008))


def free_base(count: int, offsets: tuple[int, ...] = ()) -> int:
    """A port such that it and the `count` - 1 after it are free, and so are base + each of `offsets`."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - max(count, *offsets, 0))
        ports = [base + offset for offset in (*range(count), *offsets)]
        sockets = [socket.socket() for _ in ports]
        try:
            for port, sock in zip(ports, sockets):
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free port range")


@pytest.fixture
def instances(tmp_path: Path) -> Iterator[list[str]]:
    port, events = free_base(INSTANCES), free_base(2 * INSTANCES)
    log = (tmp_path / "fleet.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.fleet.server", "--instances", str(INSTANCES), "--port", str(port)]
        + ["--events-port", str(events), "--blocks", "512"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the host prints its instances once all listen
        assert line, (tmp_path / "fleet.log").read_text()
        yield json.loads(line)["ready"]
    finally:
        stop_server(proc)


def router_state(url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{url}/ready", timeout=5).json()["models"][MODEL])


def wait_until(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.1)
    raise TimeoutError(what)


def test_kv_routing_through_the_real_router_finds_each_sessions_history(instances: list[str], tmp_path: Path) -> None:
    port = free_port()
    upstreams = "".join(f"      - {url}\n" for url in instances)
    config = tmp_path / "router.yaml"
    # A load bound this loose keeps every request on its cache: the test is about finding it.
    config.write_text(
        f"host: 127.0.0.1\nport: {port}\nrouter:\n  prefix_load_factor: 100\n  kv_discovery_interval_s: 0.5\n"
        f"routes:\n  - name: {MODEL}\n    policy: kv\n    upstreams:\n{upstreams}"
    )
    router = start_server(["--config", str(config)], tmp_path / "router.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: router_state(url)["ready_instances"] == INSTANCES, 60, "the router's instances")
        for instance in instances:  # a batch from each: the router syncs it, from the replay socket
            assert httpx.post(f"{instance}/reset_prefix_cache", timeout=5).status_code == 200
        wait_until(
            lambda: len(router_state(url)["kv_routing"]["events_instances"]) == INSTANCES, 30, "kv events followed"
        )
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="EMPTY", max_retries=0, timeout=60)
        rng = random.Random(5)
        later_turns = 0
        for session in range(8):
            messages: list[Any] = [
                {"role": "system", "content": " ".join(f"s{session}w{rng.randrange(10**6)}" for _ in range(90))}
            ]
            previous_prompt = 0
            for turn in range(3):
                messages.append({"role": "user", "content": " ".join(f"q{rng.randrange(10**6)}" for _ in range(20))})
                if turn % 2:
                    stream = client.chat.completions.create(
                        model=MODEL,
                        messages=messages,
                        max_tokens=24,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                    chunks = list(stream)
                    answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                    usage = chunks[-1].usage
                else:
                    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24)
                    answer, usage = whole.choices[0].message.content or "", whole.usage
                assert usage is not None and usage.completion_tokens == 24 and len(answer.split()) == 24
                assert usage.prompt_tokens_details is not None
                cached = usage.prompt_tokens_details.cached_tokens or 0
                if turn:  # the history's blocks are on one instance; kv sends the turn there
                    later_turns += 1
                    assert cached >= previous_prompt // 16 * 16, (session, turn, cached, previous_prompt)
                previous_prompt = usage.prompt_tokens
                messages.append({"role": "assistant", "content": answer})
        decisions = router_state(url)["kv_routing"]["decisions"]
        assert decisions["cached"] >= later_turns
        hits = 0.0
        for instance in instances:
            for line in httpx.get(f"{instance}/metrics", timeout=5).text.splitlines():
                if line.startswith("vllm:prefix_cache_hits_total"):
                    hits += float(line.rsplit(" ", 1)[1])
        assert hits > 0
    finally:
        stop_server(router)


def test_the_suite_runs_at_four_instances_and_writes_its_results(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.fleet", "--instances", "4", "--requests", "60", "--workloads", "sessions,hot"]
        + ["--policies", "round-robin,kv", "--real-rps", "40", "--port", str(free_base(4, SUITE_PORTS))]
        + ["--out", str(tmp_path), "--name", "smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "smoke.json").read_text())
    phases = {(p["workload"], p["policy"]): p for p in result["phases"]}
    assert set(phases) == {("sessions", "round-robin"), ("sessions", "kv"), ("hot", "round-robin"), ("hot", "kv")}
    for phase in phases.values():
        assert phase["lost"] == 0 and phase["requests"] == 60
        assert 0 < phase["hit_rate"] <= phase["ceiling_hit_rate"] + 1e-9
    assert phases[("sessions", "kv")]["kv_decisions"]["cached"] > 0
    assert {t["target"] for t in result["targets"]} >= {
        "sessions: kv hit rate / oracle",
        "hot: kv load imbalance (max/mean)",
    }
    assert "| sessions | kv |" in (tmp_path / "smoke.md").read_text()
