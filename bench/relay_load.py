"""The Suite 2 load generator: c keep-alive clients that stream chat completions and count SSE events.

It must be cheap, because it shares a core with the stub: it parses no JSON, only counts `data: ` and
times the first one (TTFT). A run lasts `duration_s` (no new request after that), then waits for the
requests in flight, so a slow front shows up as fewer requests per second, not as a longer run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from tests.support.bench_upstream import encode

MARK = b"data: "
DONE = b"data: [DONE]"


@dataclass(frozen=True)
class Mode:
    name: str
    stream: bool
    chunks: int
    pace_ms: int

    @property
    def max_tokens(self) -> int:
        return encode(self.chunks, self.pace_ms)


MODES = {
    "stream-paced": Mode("stream-paced", True, 32, 10),  # the TTFT figures: 32 chunks, one every 10 ms
    "stream-burst": Mode("stream-burst", True, 128, 0),  # the CPU per chunk: 128 chunks back to back
    "nonstream": Mode("nonstream", False, 32, 0),  # one JSON body
}
# The memory probe: many long-lived streams open at once (100 chunks, one every 20 ms: 2 s each).
OPEN_STREAMS = Mode("open-streams", True, 100, 20)


@dataclass
class Tally:
    ttft_s: list[float] = field(default_factory=list)
    e2e_s: list[float] = field(default_factory=list)
    events: int = 0
    short: int = 0  # streams that ended with fewer events than the stub sent
    errors: int = 0
    error_sample: str = ""


def body(mode: Mode, index: int) -> dict[str, object]:
    return {
        "model": "stub",
        "messages": [{"role": "user", "content": f"Say something ({index})"}],
        "max_tokens": mode.max_tokens,
        "stream": mode.stream,
    }


async def one(session: aiohttp.ClientSession, url: str, mode: Mode, index: int, tally: Tally) -> None:
    started = time.perf_counter()
    first = 0.0
    events = 0
    carry = b""
    try:
        async with session.post(url, json=body(mode, index)) as response:
            if response.status != 200:
                tally.errors += 1
                tally.error_sample = tally.error_sample or f"{response.status} {(await response.read())[:200]!r}"
                return
            if not mode.stream:
                data = await response.read()
                first = time.perf_counter()
                events = 1 if b'"choices"' in data else 0
            else:
                async for data in response.content.iter_any():
                    # The carry is shorter than MARK, so a mark split across two reads is counted once.
                    window = carry + data
                    found = window.count(MARK)
                    if found and not first:
                        first = time.perf_counter()
                    events += found
                    carry = window[-(len(MARK) - 1) :]
                    if DONE in window:
                        events -= 1
    except (TimeoutError, aiohttp.ClientError) as exc:
        tally.errors += 1
        tally.error_sample = tally.error_sample or repr(exc)[:200]
        return
    end = time.perf_counter()
    expected = mode.chunks if mode.stream else 1
    if events < expected:
        tally.short += 1
    tally.events += events
    tally.ttft_s.append((first or end) - started)
    tally.e2e_s.append(end - started)


async def load(
    url: str,
    mode: Mode,
    concurrency: int,
    duration_s: float,
    max_requests: int,
    warmup: int,
    on_start: Callable[[], None] = lambda: None,
    headers: dict[str, str] | None = None,
) -> tuple[Tally, float]:
    """(what the measured requests saw, wall seconds of the measured part); on_start runs after the warm-up."""
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=600)
    target = f"{url}/v1/chat/completions"
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
        # Warm-up: open the pool's connections (and the front's upstream ones) before the clock starts.
        await asyncio.gather(*(one(session, target, MODES["nonstream"], i, Tally()) for i in range(warmup)))
        tally = Tally()
        issued = 0
        on_start()
        started = time.perf_counter()
        deadline = started + duration_s

        async def worker() -> None:
            nonlocal issued
            while issued < max_requests and time.perf_counter() < deadline:
                issued += 1
                await one(session, target, mode, issued, tally)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return tally, time.perf_counter() - started
