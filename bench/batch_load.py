"""Suite 5: does a batch slow live traffic? Live streamed chat at a steady rate through the real router, alone,
then with a large batch running on the same instances; the live TTFT p50 and p99 of the second phase over the
first (target: at most 1.1x each), and the batch's throughput while live traffic ran beside it.

    python -m bench.batch_load                        # results/DATE-batch-load.{json,md}
    python -m bench.batch_load --duration-s 20 --rate 4 --quick   # a smoke run

The instances are simulated vLLM engines (bench.fleet.server: vLLM's scheduler and an H100's step timing,
in their own process); the router is `python -m gateway serve` in its own process, its store SQLite in a
temporary directory. Live requests arrive at fixed intervals (an open loop: a slow answer does not slow the
arrivals) and their TTFT is timed at the client, from the request to its first streamed event. Both phases
run on the same router and instances, one after the other, so the ratio compares like with like.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson

from bench.fleet.server import MODEL
from bench.procs import wait_answering

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TARGET_RATIO = 1.1
PROMPT = "Summarise the following note in one line: the lighthouse keeper logs each passing ship by name."


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def router_config(port: int, urls: list[str], data_dir: Path, args: argparse.Namespace) -> str:
    config = {
        "host": "127.0.0.1",
        "port": port,
        "log_level": "warning",
        "data_dir": str(data_dir),
        "limits": {"max_in_flight": args.max_in_flight, "max_queue": 100_000, "queue_timeout_s": 600},
        "router": {"first_token_timeout_s": 600, "idle_timeout_s": 600},
        "batch": {"max_concurrency": args.batch_concurrency, "max_concurrency_per_batch": args.batch_concurrency},
        "routes": [{"name": MODEL, "policy": "least-loaded", "upstreams": urls}],
    }
    return json.dumps(config)  # JSON is YAML


async def live_request(http: aiohttp.ClientSession, url: str, max_tokens: int) -> float | None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    started = time.monotonic()
    first: float | None = None
    async with http.post(f"{url}/v1/chat/completions", json=body) as response:
        if response.status != 200:
            return None
        async for line in response.content:
            if first is None and line.startswith(b"data: {"):
                first = time.monotonic()
    return None if first is None else first - started


async def live_phase(url: str, rate: float, duration_s: float, max_tokens: int) -> dict[str, Any]:
    """Requests at `rate` a second for `duration_s`: TTFT p50 and p99 of those answered, and the failures."""
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as http:
        count = int(rate * duration_s)
        start = time.monotonic()
        tasks = []
        for index in range(count):
            delay = start + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(live_request(http, url, max_tokens)))
        results = await asyncio.gather(*tasks, return_exceptions=True)
    ttfts = [r for r in results if isinstance(r, float)]
    return {
        "requests": count,
        "failed": count - len(ttfts),
        "ttft_p50_s": _pct(ttfts, 0.50),
        "ttft_p99_s": _pct(ttfts, 0.99),
    }


def batch_file(lines: int, max_tokens: int) -> bytes:
    return b"".join(
        orjson.dumps(
            {
                "custom_id": f"bench-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": f"{PROMPT} {i}"}],
                    "max_tokens": max_tokens,
                },
            }
        )
        + b"\n"
        for i in range(lines)
    )


def start_batch(url: str, lines: int, max_tokens: int) -> str:
    with httpx.Client(base_url=url, timeout=120) as http:
        upload = http.post(
            "/v1/files",
            files={"file": ("bench.jsonl", io.BytesIO(batch_file(lines, max_tokens)))},
            data={"purpose": "batch"},
        )
        upload.raise_for_status()
        body = {"input_file_id": upload.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        batch = http.post("/v1/batches", json=body)
        batch.raise_for_status()
        batch_id: str = batch.json()["id"]
    return batch_id


def batch_state(url: str, batch_id: str) -> dict[str, Any]:
    state: dict[str, Any] = httpx.get(f"{url}/v1/batches/{batch_id}", timeout=30).json()
    return state


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="tokenyard-batch-bench-"))
    first_port = free_port()
    fleet_port, events_port = first_port, free_port()
    fleet = subprocess.Popen(
        [sys.executable, "-m", "bench.fleet.server", "--instances", str(args.instances), "--port", str(fleet_port)]
        + ["--events-port", str(events_port)],
        cwd=ROOT,
        stdout=(workdir / "fleet.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    urls = [f"http://127.0.0.1:{fleet_port + i}" for i in range(args.instances)]
    port = free_port()
    config = workdir / "router.yaml"
    config.write_text(router_config(port, urls, workdir / "data", args))
    router = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=(workdir / "router.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for instance in urls:
            wait_answering(instance, fleet, "/health", timeout_s=60, interval_s=0.2)
        wait_answering(url, router, "/health", timeout_s=120, interval_s=0.2)
        asyncio.run(live_phase(url, args.rate, min(5.0, args.duration_s), args.max_tokens))  # warm-up, not reported
        alone = asyncio.run(live_phase(url, args.rate, args.duration_s, args.max_tokens))
        batch_id = start_batch(url, args.batch_lines, args.batch_max_tokens)
        while batch_state(url, batch_id)["request_counts"]["completed"] < args.batch_concurrency:
            time.sleep(0.2)
        before, started = batch_state(url, batch_id)["request_counts"]["completed"], time.monotonic()
        beside = asyncio.run(live_phase(url, args.rate, args.duration_s, args.max_tokens))
        state = batch_state(url, batch_id)
        elapsed = time.monotonic() - started
        done = state["request_counts"]["completed"] - before
        httpx.post(f"{url}/v1/batches/{batch_id}/cancel", timeout=30)
    finally:
        for proc in (router, fleet):
            proc.terminate()
            proc.wait(30)
    return {
        "date": dt.date.today().isoformat(),
        "settings": vars(args),
        "live_alone": alone,
        "live_with_batch": beside,
        "ttft_p50_ratio": beside["ttft_p50_s"] / alone["ttft_p50_s"],
        "ttft_p99_ratio": beside["ttft_p99_s"] / alone["ttft_p99_s"],
        "target_ratio": TARGET_RATIO,
        "batch_lines_per_s": done / elapsed,
        "batch_output_tokens_per_s": done * args.batch_max_tokens / elapsed,
        "batch_status_at_end": state["status"],
    }


def markdown(result: dict[str, Any]) -> str:
    alone, beside = result["live_alone"], result["live_with_batch"]
    ok = "met" if max(result["ttft_p50_ratio"], result["ttft_p99_ratio"]) <= TARGET_RATIO else "NOT met"
    s = result["settings"]
    return (
        f"# Batch beside live traffic ({result['date']})\n\n"
        f"{s['instances']} simulated instances, live chat at {s['rate']}/s for {s['duration_s']} s "
        f"(max_tokens {s['max_tokens']}), batch concurrency {s['batch_concurrency']} "
        f"(max_tokens {s['batch_max_tokens']}).\n\n"
        "| phase | requests | failed | TTFT p50 (ms) | TTFT p99 (ms) |\n|---|---|---|---|---|\n"
        f"| live alone | {alone['requests']} | {alone['failed']} | {alone['ttft_p50_s'] * 1000:.1f} "
        f"| {alone['ttft_p99_s'] * 1000:.1f} |\n"
        f"| live with batch | {beside['requests']} | {beside['failed']} | {beside['ttft_p50_s'] * 1000:.1f} "
        f"| {beside['ttft_p99_s'] * 1000:.1f} |\n\n"
        f"TTFT ratio p50 {result['ttft_p50_ratio']:.2f}x, p99 {result['ttft_p99_ratio']:.2f}x "
        f"(target ≤ {TARGET_RATIO}x: {ok}). Batch throughput beside live traffic: "
        f"{result['batch_lines_per_s']:.1f} lines/s, {result['batch_output_tokens_per_s']:.0f} output tokens/s.\n"
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--rate", type=float, default=8.0, help="Live requests a second.")
    parser.add_argument("--duration-s", type=float, default=60.0, help="Each phase's length.")
    parser.add_argument("--max-tokens", type=int, default=32, help="A live request's max_tokens.")
    parser.add_argument("--batch-lines", type=int, default=20_000)
    parser.add_argument("--batch-max-tokens", type=int, default=64)
    parser.add_argument("--batch-concurrency", type=int, default=16, help="The router's batch.max_concurrency.")
    parser.add_argument("--max-in-flight", type=int, default=100_000, help="The router's limits.max_in_flight.")
    parser.add_argument("--quick", action="store_true", help="Print the results; write nothing.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    result = run(args)
    text = markdown(result)
    print(text)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        stem = RESULTS / f"{result['date']}-batch-load"
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        stem.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
