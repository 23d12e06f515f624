"""A simulated instance's KV events on vLLM's own wire (vllm/distributed/kv_events.py, ZmqEventPublisher).

A PUB socket sends each batch as three frames: the topic, the batch's sequence number (8 bytes, big-endian)
and the msgpack payload: an array [ts, events, data_parallel_rank] whose events are maps tagged by their
class name (BlockStored, BlockRemoved, AllBlocksCleared), the fields in vLLM's order. A ROUTER socket
answers a replay request (client id, empty frame, start sequence number) with every buffered batch from
there on, as (client id, empty, topic, seq, payload), then an end marker with sequence number -1.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from bench.fleet.cache import CacheEvent, Cleared, Removed, Stored

END_SEQ = (-1).to_bytes(8, "big", signed=True)
MEDIUM_GPU = "GPU"


class BlockStored(msgspec.Struct, tag=True, omit_defaults=True):
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None


class BlockRemoved(msgspec.Struct, tag=True, omit_defaults=True):
    block_hashes: list[int]
    medium: str | None


class AllBlocksCleared(msgspec.Struct, tag=True, omit_defaults=True):
    pass


class KVEventBatch(msgspec.Struct, array_like=True, omit_defaults=True):
    ts: float
    events: list[BlockStored | BlockRemoved | AllBlocksCleared]
    data_parallel_rank: int | None = None


_encoder = msgspec.msgpack.Encoder()


def wire(event: CacheEvent) -> BlockStored | BlockRemoved | AllBlocksCleared:
    if isinstance(event, Stored):
        return BlockStored(
            event.block_hashes, event.parent_block_hash, event.token_ids, event.block_size, None, MEDIUM_GPU, None
        )
    if isinstance(event, Removed):
        return BlockRemoved(event.block_hashes, MEDIUM_GPU)
    assert isinstance(event, Cleared)
    return AllBlocksCleared()


def encode(events: list[CacheEvent], ts: float | None = None) -> bytes:
    """One batch's msgpack payload, as vLLM's publisher encodes a KVEventBatch (data_parallel_rank 0)."""
    return _encoder.encode(KVEventBatch(time.time() if ts is None else ts, [wire(e) for e in events], 0))


class Publisher:
    """PUB and replay sockets of one instance, bound on loopback."""

    def __init__(self, context: zmq.asyncio.Context, port: int, replay_port: int, buffer_steps: int = 10_000) -> None:
        self.port, self.replay_port = port, replay_port
        self._pub = context.socket(zmq.PUB)
        self._pub.set_hwm(100_000)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.bind(f"tcp://127.0.0.1:{port}")
        self._replay = context.socket(zmq.ROUTER)
        self._replay.setsockopt(zmq.LINGER, 0)
        self._replay.bind(f"tcp://127.0.0.1:{replay_port}")
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self.topic = b""

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._serve_replay())

    def publish(self, events: list[CacheEvent]) -> None:
        if not events:
            return
        payload = encode(events)
        seq = self._seq.to_bytes(8, "big")
        self._buffer.append((self._seq, payload))
        self._seq += 1
        self._pub.send_multipart((self.topic, seq, payload))

    def restart(self) -> None:
        """Number batches from 0 again with an empty buffer, as a restarted engine's publisher does."""
        self._buffer.clear()
        self._seq = 0

    def buffered(self) -> list[tuple[int, bytes]]:
        """The batches a replay could still send, oldest first."""
        return list(self._buffer)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._pub.close(linger=0)
        self._replay.close(linger=0)

    async def _serve_replay(self) -> None:
        while True:
            frames: list[Any] = await self._replay.recv_multipart()
            if len(frames) != 3:
                continue
            client, _, start = frames
            first = int.from_bytes(start, "big")
            for seq, payload in list(self._buffer):
                if seq >= first:
                    await self._replay.send_multipart((client, b"", self.topic, seq.to_bytes(8, "big"), payload))
            await self._replay.send_multipart((client, b"", b"", END_SEQ, b""))
