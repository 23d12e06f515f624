"""How many KV events per second one core applies to the router's KV index (policy kv).

    python -m bench.kv_index_rate                  # 200k events, printed as JSON
    python -m bench.kv_index_rate --events 20000

A synthetic stream like an engine's under prefix-cache churn: sequences of BlockStored batches (each a few
blocks of `--block-size` tokens chained to the last), and BlockRemoved for the oldest blocks once the
engine's cache (`--cache-blocks`) is full. Batches are msgpack-encoded as vLLM's publisher writes them, and
the timed loop is what the subscriber does per batch: decode, then apply to the index.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import deque
from typing import Any

import msgspec

from gateway.routing.kv_events import decode
from gateway.routing.kv_index import KvIndex, Verdict

INSTANCE = "http://10.0.0.1:8000"


def stream(events: int, block_size: int, cache_blocks: int, seed: int = 0) -> list[bytes]:
    """Encoded batches holding about `events` events in all."""
    rng = random.Random(seed)
    held: deque[int] = deque()
    batches: list[bytes] = []
    next_hash, count, parent = 1, 0, None
    while count < events:
        batch: list[dict[str, Any]] = []
        if rng.random() < 0.1:
            parent = None  # a new sequence
        blocks = rng.randint(1, 4)
        hashes = list(range(next_hash, next_hash + blocks))
        next_hash += blocks
        batch.append(
            {
                "type": "BlockStored",
                "block_hashes": hashes,
                "parent_block_hash": parent,
                "token_ids": [rng.randrange(256_000) for _ in range(blocks * block_size)],
                "block_size": block_size,
                "lora_id": None,
                "medium": "GPU",
                "lora_name": None,
            }
        )
        parent = hashes[-1]
        held.extend(hashes)
        if len(held) > cache_blocks:
            evicted = [held.popleft() for _ in range(len(held) - cache_blocks)]
            batch.append({"type": "BlockRemoved", "block_hashes": evicted, "medium": "GPU"})
        count += len(batch)
        batches.append(msgspec.msgpack.encode([time.time(), batch, None]))
    return batches


def measure(events: int, block_size: int, cache_blocks: int, max_blocks: int) -> dict[str, Any]:
    batches = stream(events, block_size, cache_blocks)
    index = KvIndex(max_blocks)
    started = time.process_time()
    for seq, payload in enumerate(batches):
        ts, decoded = decode(payload)
        assert index.apply(INSTANCE, seq, ts, decoded) is Verdict.APPLIED
    cpu_s = time.process_time() - started
    return {
        "events": index.events_applied,
        "batches": len(batches),
        "block_size": block_size,
        "cpu_s": round(cpu_s, 3),
        "events_per_s_per_core": round(index.events_applied / cpu_s),
        "blocks_indexed": index.size,
        "skipped": index.skipped,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--cache-blocks", type=int, default=20_000, help="the engine's KV cache, in blocks")
    parser.add_argument("--max-blocks", type=int, default=500_000, help="the index's bound (kv_max_blocks)")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.events, args.block_size, args.cache_blocks, args.max_blocks)))


if __name__ == "__main__":
    main()
