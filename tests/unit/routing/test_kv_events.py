"""The KV-event subscriber against vLLM's own ZMQ publisher, in process: its batches, its replay, a restart."""

from __future__ import annotations

import asyncio
import random
import socket
import time

import pytest

from gateway.routing.kv_events import KvSubscriber, decode, endpoint_for, new_context
from gateway.routing.kv_index import Cleared, KvIndex, Removed, Stored, block_keys
from tests.support.waiting import until

kv_events = pytest.importorskip("vllm.distributed.kv_events")  # the real wire format

INSTANCE = "http://127.0.0.1:8000"
SIZE = 4
PROMPT = list(range(500, 516))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def batch(*events: object) -> object:
    return kv_events.KVEventBatch(ts=time.time(), events=list(events))


def stored(tokens: list[int], hashes: list[int], parent: int | None = None) -> object:
    return kv_events.BlockStored(
        block_hashes=hashes,
        parent_block_hash=parent,
        token_ids=tokens,
        block_size=SIZE,
        lora_id=None,
        medium="GPU",
        lora_name=None,
        group_idx=0,
    )


def publisher(pub: int, replay: int) -> object:
    return kv_events.ZmqEventPublisher(0, endpoint=f"tcp://*:{pub}", replay_endpoint=f"tcp://*:{replay}")


def test_decode_reads_vllms_encoding() -> None:
    import msgspec

    payload = msgspec.msgpack.encode(
        batch(
            stored(PROMPT[:8], [1, 2]),
            kv_events.BlockRemoved(block_hashes=[2], medium="GPU", group_idx=0),
            kv_events.BlockRemoved(block_hashes=[9], medium="CPU"),
            kv_events.AllBlocksCleared(),
        )
    )
    _, events = decode(payload)
    assert events == [Stored([1, 2], None, PROMPT[:8], SIZE, None, 0), Removed([2], 0), Cleared()]


def test_a_wildcard_endpoint_is_reached_at_the_instances_host() -> None:
    assert endpoint_for("tcp://*:5557", "http://10.1.2.3:8000") == "tcp://10.1.2.3:5557"
    assert endpoint_for("tcp://10.9.9.9:5557", "http://10.1.2.3:8000") == "tcp://10.9.9.9:5557"


async def test_events_gap_replay_and_restart_through_real_sockets() -> None:
    pub_port, replay_port = free_port(), free_port()
    pub = publisher(pub_port, replay_port)
    index = KvIndex(max_blocks=1000)
    context = new_context()
    # Published before anyone listens: the subscriber's first batch leaves a gap, which the replay fills.
    pub.publish(batch(stored(PROMPT[:4], [11])))
    await asyncio.sleep(0.3)
    subscriber = KvSubscriber(index, INSTANCE, f"tcp://127.0.0.1:{pub_port}", f"tcp://127.0.0.1:{replay_port}", context)
    task = asyncio.ensure_future(subscriber.run())
    keys = block_keys(PROMPT, SIZE)
    try:
        await asyncio.sleep(0.3)  # the SUB socket's connection (a PUB drops what it sends before it)
        pub.publish(batch(stored(PROMPT[4:8], [12], parent=11)))
        await until(lambda: index.matched(keys, {INSTANCE}).get(INSTANCE, 0) == 2, in_thread=False)
        assert index.resyncs == 1 and index.next_seq(INSTANCE) == 2
        pub.publish(batch(kv_events.BlockRemoved(block_hashes=[12], medium="GPU", group_idx=0)))
        await until(lambda: index.matched(keys, {INSTANCE}).get(INSTANCE, 0) == 1, in_thread=False)

        # The engine restarts: a new publisher on the same ports numbers from 0 again; the old blocks go.
        pub.shutdown()
        await asyncio.sleep(0.2)
        pub = publisher(pub_port, replay_port)
        await asyncio.sleep(0.5)
        other = list(range(900, 916))
        pub.publish(batch(stored(other[:8], [21, 22])))
        await until(lambda: index.matched(block_keys(other, SIZE), {INSTANCE}).get(INSTANCE, 0) == 2, in_thread=False)
        assert index.matched(keys, {INSTANCE}).get(INSTANCE, 0) == 0
        assert index.resyncs == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        pub.shutdown()
        context.destroy(linger=0)


async def test_a_gap_the_publisher_no_longer_buffers_drops_the_instances_blocks() -> None:
    pub_port = free_port()
    pub = kv_events.ZmqEventPublisher(0, endpoint=f"tcp://*:{pub_port}")  # no replay endpoint
    index = KvIndex(max_blocks=1000)
    index.apply(INSTANCE, 0, 0.0, [Stored([1], None, PROMPT[:4], SIZE)])  # what we knew before the gap
    context = new_context()
    subscriber = KvSubscriber(index, INSTANCE, f"tcp://127.0.0.1:{pub_port}", None, context)
    task = asyncio.ensure_future(subscriber.run())
    try:
        pub.publish(batch())  # seq 0 and 1: sent before the subscriber is connected, so missed
        pub.publish(batch())
        await asyncio.sleep(0.5)
        pub.publish(batch(stored(list(range(40, 44)), [5])))  # seq 2: a gap after our 0
        await until(lambda: index.resyncs == 1, in_thread=False)
        await until(lambda: index.next_seq(INSTANCE) == 3, in_thread=False)
        assert index.matched(block_keys(PROMPT, SIZE), {INSTANCE}).get(INSTANCE, 0) == 0  # dropped
        assert index.matched(block_keys(list(range(40, 44)), SIZE), {INSTANCE}).get(INSTANCE, 0) == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        pub.shutdown()
        context.destroy(linger=0)


async def test_a_routes_port_pattern_names_each_instances_endpoints() -> None:
    from gateway.routing.kv import KvRouting
    from gateway.settings import RouterSettings, RouteSettings

    route = RouteSettings(name="m", policy="kv", kv_events={"port": 5557, "replay_port": 5558})  # type: ignore[arg-type]
    kv = KvRouting(route, RouterSettings(), random.Random(0), lambda: None)
    try:
        assert await kv._endpoints("http://10.0.0.5:8000") == ("tcp://10.0.0.5:5557", "tcp://10.0.0.5:5558")
    finally:
        await kv.close()
