"""One simulated GPU engine: vLLM's scheduler and a timing model of its steps, in simulated time.

The scheduler (vllm/v1/core/sched/scheduler.py, reduced): requests wait in arrival order; the head of the
queue is admitted while fewer than `max_num_seqs` run and the prefix cache can give it blocks (its cached
prefix is counted then); each step decodes one token for every running request past its prefill, and
spends what is left of `max_num_batched_tokens` on prefill chunks, first come first served. A request's
first token comes out of the step that ends its prefill.

A step takes `step_base_s + decode_per_seq_s x decoding requests + prefill_per_token_s x prefill tokens`.
The defaults model Llama-3.1-8B in bf16 on one H100 SXM:

- step_base_s 6 ms: a decode step reads the 16 GB of weights at ~3.35 TB/s (~5 ms) plus ~1 ms of scheduling
  and launch overhead; vLLM's published inter-token latency for 8B models on one H100 at low load is 6-8 ms.
- decode_per_seq_s 0.08 ms: each running sequence adds its KV cache read; Llama-3-8B's KV is 128 KiB a
  token (32 layers x 8 KV heads x 128 x 2 x bf16), ~256 MiB for a 2k-token context, ~0.08 ms at 3.35 TB/s.
  At 256 sequences a step takes ~26 ms, ~10k output tokens/s: the order of vLLM's published 8B throughput.
- prefill_per_token_s 50 us: 2 x 8e9 FLOPs a token at ~330 TFLOP/s achieved (a third of the H100's dense
  bf16 peak), ~20k prefill tokens/s, in line with published vLLM prefill throughput for 8B on one H100.
- max_num_seqs 256 and max_num_batched_tokens 8192: vLLM V1's defaults for online serving on an H100.

Simulated time runs `scale` times as fast as the wall clock (below 1: slower). A request's arrival is the
simulated time it reached the instance; it joins the batch at the first step that starts after it, and an
idle engine's clock jumps to it. An engine sleeps until the wall clock reaches the end of its step. A
machine that cannot keep up makes an engine late: it then runs its steps without sleeping until it has
caught up, so the simulated times stay what they would have been; only the wall-clock moment when an
answer is seen comes later (`lag_s` records the most an engine fell behind). Between arrivals a batch that
only decodes is advanced to its next finish in one jump instead of step by step.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections import deque
from dataclasses import dataclass, field

from bench.fleet.cache import Allocation, PrefixCache, block_hashes


class Clock:
    """Simulated seconds since the start, `scale` of them per wall-clock second."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        self.started = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self.started) * self.scale

    def real_s(self, sim_s: float) -> float:
        return sim_s / self.scale


@dataclass(frozen=True)
class Timing:
    step_base_s: float = 0.006
    decode_per_seq_s: float = 0.00008
    prefill_per_token_s: float = 0.00005
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192

    def step_s(self, decoding: int, prefill_tokens: int) -> float:
        return self.step_base_s + self.decode_per_seq_s * decoding + self.prefill_per_token_s * prefill_tokens


@dataclass
class Request:
    prompt: list[int]
    max_tokens: int
    arrival: float  # simulated
    hashes: list[int] = field(default_factory=list)
    output: list[int] = field(default_factory=list)  # filled in when it finishes
    allocation: Allocation | None = None
    prefill_left: int = 0
    first_token: asyncio.Future[float] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    done: asyncio.Future[float] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    aborted: bool = False


@dataclass(frozen=True)
class Record:
    """One finished request, in simulated seconds."""

    arrival: float
    first_token: float
    finish: float
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int


class Engine:
    def __init__(self, cache: PrefixCache, clock: Clock, timing: Timing | None = None, output_token: int = 7) -> None:
        self.cache, self.clock = cache, clock
        self.timing = timing or Timing()
        self.output_token = output_token  # every output token is this id (its text: one word)
        self.waiting: deque[Request] = deque()
        self.prefilling: deque[Request] = deque()
        self._decoding: list[tuple[int, int, Request]] = []  # (step it finishes at, tie-break, request)
        self._tie = itertools.count()
        self.steps = 0
        self.sim_now = 0.0  # the engine's own clock: the end of its last step
        self.records: list[Record] = []
        self.lag_s = 0.0  # the most the engine fell behind the wall clock, in simulated seconds
        self.on_events = lambda: None  # set by the publisher: called after a step that made cache events
        self._wake = asyncio.Event()
        self.idle = asyncio.Event()  # set while nothing runs or waits
        self.idle.set()

    # -- what the server calls ------------------------------------------------------------

    def submit(self, request: Request) -> None:
        request.hashes = block_hashes(request.prompt, self.cache.block_size)
        self.waiting.append(request)
        self.idle.clear()
        self._wake.set()

    def abort(self, request: Request) -> None:
        request.aborted = True
        if request in self.waiting:
            self.waiting.remove(request)
        self._wake.set()

    @property
    def running(self) -> int:
        return len(self.prefilling) + len(self._decoding)

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            self._admit()
            if not self.running:
                if not self.waiting:
                    self.idle.set()
                self._wake.clear()
                await self._wake.wait()  # admission moves the clock to the arrival
                continue
            if self.prefilling:
                await self._prefill_step()
            else:
                await self._decode_span()
            if self.cache.events:
                self.on_events()

    def _admit(self) -> None:
        timing = self.timing
        while self.waiting and self.running < timing.max_num_seqs:
            request = self.waiting[0]
            if request.arrival > self.sim_now:
                if self.running:
                    return  # a late engine reaches the arrival step by step
                self.sim_now = request.arrival  # an idle one jumps to it
            total = len(request.prompt) + request.max_tokens
            allocation = self.cache.allocate(len(request.prompt), request.hashes, total)
            if allocation is None:
                if not self.running and self.cache.free_blocks() == self.cache.num_blocks:
                    self.waiting.popleft()  # larger than the whole pool: it can never run
                    request.first_token.set_exception(ValueError("the prompt does not fit the KV cache"))
                    continue
                return
            self.waiting.popleft()
            request.allocation = allocation
            request.prefill_left = len(request.prompt) - allocation.hits * self.cache.block_size
            self.prefilling.append(request)

    async def _prefill_step(self) -> None:
        budget = self.timing.max_num_batched_tokens - len(self._decoding)
        chunks: list[tuple[Request, int]] = []
        for request in self.prefilling:
            if budget <= 0:
                break
            take = min(budget, request.prefill_left)
            chunks.append((request, take))
            budget -= take
        step = self.timing.step_s(len(self._decoding), sum(take for _, take in chunks))
        await self._sleep_until(self.sim_now + step)
        self._advance(1, step)
        for request, take in chunks:
            request.prefill_left -= take
            if request.prefill_left == 0:
                self.prefilling.remove(request)
                self._first_token(request)

    async def _decode_span(self) -> None:
        """Decode-only steps up to the next finish, or to the step in which a request arrives (it joins the
        batch at the step after)."""
        step = self.timing.step_s(len(self._decoding), 0)
        ahead = max(1, self._decoding[0][0] - self.steps)
        if self.waiting and self.waiting[0].arrival > self.sim_now:  # arrived while this engine ran late
            ahead = min(ahead, math.ceil((self.waiting[0].arrival - self.sim_now) / step))
        self._wake.clear()  # set by an arrival; a request already waiting for blocks waits for a finish
        target = self.sim_now + ahead * step
        delay = self.clock.real_s(target - self.clock.now())
        done = ahead
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
                arrival = self.waiting[-1].arrival if self.waiting else self.clock.now()
                done = min(ahead, max(1, math.ceil((arrival - self.sim_now) / step)))
            if done == ahead:
                await self._sleep_until(target)  # what ends then must not be seen earlier
        self._advance(done, step)

    def _advance(self, steps: int, step_s: float) -> None:
        self.steps += steps
        self.sim_now += steps * step_s
        self.lag_s = max(self.lag_s, self.clock.now() - self.sim_now)
        while self._decoding and self._decoding[0][0] <= self.steps:
            _, _, request = heapq.heappop(self._decoding)
            self._finish(request)

    def _first_token(self, request: Request) -> None:
        assert request.allocation is not None
        self.cache.cache_full_blocks(request.allocation, request.prompt, request.hashes, request.allocation.hits)
        if not request.first_token.done():
            request.first_token.set_result(self.sim_now)
        left = 0 if request.aborted else request.max_tokens - 1
        heapq.heappush(self._decoding, (self.steps + left, next(self._tie), request))

    def _finish(self, request: Request) -> None:
        assert request.allocation is not None
        request.output = [self.output_token] * request.max_tokens
        tokens = request.prompt + request.output
        full = len(request.hashes)
        more = block_hashes(
            tokens[full * self.cache.block_size :], self.cache.block_size, request.hashes[-1] if full else None
        )
        self.cache.cache_full_blocks(request.allocation, tokens, request.hashes + more, full)
        self.cache.free(request.allocation)
        self.records.append(
            Record(
                request.arrival,
                request.first_token.result() if request.first_token.done() else self.sim_now,
                self.sim_now,
                len(request.prompt),
                request.allocation.hits * self.cache.block_size,
                request.max_tokens,
            )
        )
        if not request.done.done():
            request.done.set_result(self.sim_now)

    async def _sleep_until(self, sim_t: float) -> None:
        delay = self.clock.real_s(sim_t - self.clock.now())
        if delay > 0:
            await asyncio.sleep(delay)
