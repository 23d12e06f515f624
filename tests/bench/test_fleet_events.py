"""Suite 4's simulated instance on the wire: its KV events read by the router's own decoder and vLLM's, and
followed by the router's own subscriber through real ZMQ sockets, replay included; its step timing."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import msgspec
import pytest

from bench.fleet.cache import PrefixCache, block_hashes
from bench.fleet.engine import Clock, Engine, Request, Timing
from bench.fleet.events import Publisher, encode
from gateway.routing.kv_events import KvSubscriber, decode, new_context
from gateway.routing.kv_index import Cleared, KvIndex, Removed, Stored, block_keys

B = 16
INSTANCE = "http://127.0.0.1:9"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(cache: PrefixCache, tokens: list[int]) -> None:
    hashes = block_hashes(tokens, B)
    allocation = cache.allocate(len(tokens), hashes, len(tokens))
    assert allocation is not None
    cache.cache_full_blocks(allocation, tokens, hashes, allocation.hits)
    cache.free(allocation)


async def until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.02)


def test_a_batch_reads_the_same_with_the_routers_decoder_and_vllms() -> None:
    cache = PrefixCache(4, B)
    first, second = list(range(1000, 1032)), list(range(2000, 2032))
    serve(cache, first)
    serve(cache, second)
    serve(cache, list(range(3000, 3032)))  # evicts `first`, tail block first
    cache.reset()
    payload = encode(cache.drain_events(), ts=12.5)

    ts, events = decode(payload)
    h1, h2 = block_hashes(first, B), block_hashes(second, B)
    assert ts == 12.5
    assert events[0] == Stored(h1, None, first, B, None, None)
    assert events[1] == Stored(h2, None, second, B, None, None)
    assert events[2] == Removed([h1[1], h1[0]], None)
    assert isinstance(events[-1], Cleared)

    from vllm.distributed.kv_events import BlockRemoved, BlockStored, KVEventBatch  # the publisher's own types

    theirs = msgspec.msgpack.Decoder(KVEventBatch).decode(payload)
    assert theirs.ts == 12.5 and theirs.data_parallel_rank == 0
    assert isinstance(theirs.events[0], BlockStored)
    assert theirs.events[0].block_hashes == h1 and theirs.events[0].token_ids == first
    assert theirs.events[0].medium == "GPU" and theirs.events[0].parent_block_hash is None
    assert isinstance(theirs.events[2], BlockRemoved) and theirs.events[2].block_hashes == [h1[1], h1[0]]


async def test_the_routers_subscriber_follows_an_instance_and_replays_what_it_missed() -> None:
    context = new_context()
    publisher = Publisher(context, free_port(), free_port())
    publisher.start()
    cache = PrefixCache(16, B)
    early = list(range(100, 148))  # three blocks, published before anyone listens
    serve(cache, early)
    publisher.publish(cache.drain_events())
    index = KvIndex(max_blocks=1000)
    endpoint, replay = f"tcp://127.0.0.1:{publisher.port}", f"tcp://127.0.0.1:{publisher.replay_port}"
    task = asyncio.ensure_future(KvSubscriber(index, INSTANCE, endpoint, replay, context).run())
    try:
        # A PUB socket drops what it sends before the SUB is connected: one new block a batch until one lands.
        prompts = [early]
        deadline = time.monotonic() + 10
        while not index.synced(INSTANCE):
            assert time.monotonic() < deadline, "no batch reached the subscriber"
            prompts.append(list(range(1000 + 16 * len(prompts), 1016 + 16 * len(prompts))))
            serve(cache, prompts[-1])
            publisher.publish(cache.drain_events())
            await asyncio.sleep(0.05)
        assert len(prompts) <= 10  # so nothing of `early` was evicted
        await until(lambda: index.next_seq(INSTANCE) == len(prompts))
        assert index.resyncs == 1  # the first batch it saw left a gap, filled from the replay socket
        assert index.matched(block_keys(early, B), {INSTANCE}).get(INSTANCE, 0) == 3
        # New blocks, then their eviction, arrive live; the index agrees with the cache block for block.
        fresh = list(range(700, 764))
        serve(cache, fresh)
        publisher.publish(cache.drain_events())
        await until(lambda: index.matched(block_keys(fresh, B), {INSTANCE}).get(INSTANCE, 0) == 4)
        serve(cache, list(range(5000, 5000 + 16 * 15)))  # 15 of the 16 blocks: most of the rest goes
        publisher.publish(cache.drain_events())
        await until(lambda: index.next_seq(INSTANCE) == len(prompts) + 2)
        for prompt in [*prompts, fresh]:
            expected = cache.cached_prefix(block_hashes(prompt, B))
            assert index.matched(block_keys(prompt, B), {INSTANCE}).get(INSTANCE, 0) == expected
        assert cache.cached_prefix(block_hashes(early, B)) == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await publisher.close()
        context.destroy(linger=0)


async def test_the_engine_times_a_request_from_its_prefill_and_decode_steps() -> None:
    timing = Timing(step_base_s=0.01, decode_per_seq_s=0.001, prefill_per_token_s=0.0001, max_num_batched_tokens=8192)
    engine = Engine(PrefixCache(64, B), Clock(scale=20.0), timing)
    runner = asyncio.ensure_future(engine.run())
    try:
        prompt = list(range(200))  # 200 uncached tokens, then 3 more output tokens after the first
        request = Request(prompt, 4, engine.clock.now())
        engine.submit(request)
        first, done = await request.first_token, await request.done
        assert first - request.arrival == pytest.approx(0.01 + 200 * 0.0001)
        assert done - first == pytest.approx(3 * (0.01 + 0.001))
        again = Request(prompt, 1, engine.clock.now())
        engine.submit(again)
        # 192 tokens (12 blocks) cached: 8 to prefill.
        assert await again.first_token - again.arrival == pytest.approx(0.01 + 8 * 0.0001)
        assert [r.cached_tokens for r in engine.records] == [0, 192]
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
