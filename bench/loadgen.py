"""An asyncio load generator that streams through the OpenAI HTTP API and times every event.

python -m bench.loadgen --url http://127.0.0.1:8000 --model gemma-3-270m --concurrency 1 8 --requests 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import asdict, dataclass, field

import httpx
import orjson

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


@dataclass
class RequestTiming:
    ttft_s: float
    e2e_s: float
    output_tokens: int
    gaps_s: list[float] = field(default_factory=list)


@dataclass
class RunResult:
    concurrency: int
    requests: int
    wall_s: float
    output_tokens_per_s: float
    requests_per_s: float
    ttft_p50_s: float
    ttft_p90_s: float
    ttft_p99_s: float
    itl_p50_s: float
    e2e_p50_s: float
    e2e_p99_s: float


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def one_request(client: httpx.AsyncClient, model: str, max_tokens: int, prompt: str) -> RequestTiming:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": True,
        "ignore_eos": True,
        "temperature": 0.8,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first: float | None = None
    last = started
    gaps: list[float] = []
    tokens = 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = orjson.loads(line[6:])
            now = time.perf_counter()
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            if event.get("choices"):
                if first is None:
                    first = now
                else:
                    gaps.append(now - last)
                last = now
    end = time.perf_counter()
    return RequestTiming(ttft_s=(first or end) - started, e2e_s=end - started, output_tokens=tokens, gaps_s=gaps)


async def run(
    url: str, model: str, concurrency: int, requests: int, max_tokens: int, prompt: str = PROMPT
) -> RunResult:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        semaphore = asyncio.Semaphore(concurrency)

        async def bounded(i: int) -> RequestTiming:
            async with semaphore:
                return await one_request(client, model, max_tokens, f"{prompt} ({i})")

        started = time.perf_counter()
        timings = await asyncio.gather(*(bounded(i) for i in range(requests)))
        wall = time.perf_counter() - started
    ttfts = [t.ttft_s for t in timings]
    e2es = [t.e2e_s for t in timings]
    gaps = [g for t in timings for g in t.gaps_s]
    return RunResult(
        concurrency=concurrency,
        requests=requests,
        wall_s=wall,
        output_tokens_per_s=sum(t.output_tokens for t in timings) / wall,
        requests_per_s=requests / wall,
        ttft_p50_s=statistics.median(ttfts),
        ttft_p90_s=_pct(ttfts, 0.9),
        ttft_p99_s=_pct(ttfts, 0.99),
        itl_p50_s=statistics.median(gaps) if gaps else float("nan"),
        e2e_p50_s=statistics.median(e2es),
        e2e_p99_s=_pct(e2es, 0.99),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    for concurrency in args.concurrency:
        result = asyncio.run(run(args.url, args.model, concurrency, max(args.requests, concurrency), args.max_tokens))
        print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
