"""The KV index rate bench: its stream is one the index takes whole (the rate itself is printed, not asserted)."""

from __future__ import annotations

from bench.kv_index_rate import measure


def test_the_stream_applies_in_order_and_stays_within_the_cache() -> None:
    result = measure(events=2000, block_size=4, cache_blocks=100, max_blocks=10_000)
    assert result["events"] >= 2000 and result["skipped"] == 0
    assert result["blocks_indexed"] == 100  # stores and removals balance as the engine's cache does
    print(result)
