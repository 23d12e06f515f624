"""Suite 4's prefix cache model (bench/fleet/cache.py) against cases worked by hand (B=4)."""

from __future__ import annotations

from bench.fleet.cache import Cleared, PrefixCache, Removed, Stored, block_hashes

B = 4


def run(cache: PrefixCache, tokens: list[int], total: int | None = None) -> int:
    """One request from admission to its end; the tokens it found cached."""
    hashes = block_hashes(tokens, B)
    allocation = cache.allocate(len(tokens), hashes, total or len(tokens))
    assert allocation is not None
    cache.cache_full_blocks(allocation, tokens, hashes, allocation.hits)
    cache.free(allocation)
    return allocation.hits * B


def test_hashes_chain_over_whole_blocks_only() -> None:
    a, b = block_hashes(list(range(10)), B), block_hashes(list(range(8)) + [99, 98, 97, 96], B)
    assert len(a) == 2 and len(b) == 3  # a partial block has no hash
    assert a == b[:2]
    assert block_hashes([0, 1, 2, 3], B) != block_hashes([4, 5, 6, 7], B, parent=None)
    # Going on from a prefix's last hash gives the whole sequence's hashes.
    assert block_hashes(list(range(4, 8)), B, parent=a[0]) == [a[1]]


def test_a_repeated_prompt_hits_its_full_blocks_and_events_say_what_was_cached() -> None:
    cache = PrefixCache(8, B)
    prompt = list(range(1, 11))  # 10 tokens: two full blocks and a partial one
    assert run(cache, prompt) == 0
    h = block_hashes(prompt, B)
    assert cache.drain_events() == [Stored(h, None, prompt[:8], B)]
    assert run(cache, prompt) == 8
    assert cache.drain_events() == []  # nothing new was cached
    assert (cache.queries, cache.hits) == (20, 8)


def test_a_fully_cached_prompt_still_computes_its_last_block() -> None:
    cache = PrefixCache(8, B)
    prompt = list(range(8))
    run(cache, prompt)
    assert run(cache, prompt) == 4  # (8 - 1) // 4 blocks: vLLM recomputes at least one token


def test_prompts_sharing_a_prefix_share_its_blocks() -> None:
    cache = PrefixCache(16, B)
    system = list(range(100, 108))
    run(cache, system + [1, 2, 3, 4, 5])
    cache.drain_events()
    assert run(cache, system + [6, 7, 8, 9, 10]) == 8
    stored = cache.drain_events()
    assert stored == [Stored([block_hashes(system + [6, 7, 8, 9], B)[2]], block_hashes(system, B)[1], [6, 7, 8, 9], B)]


def test_eviction_takes_the_least_recently_freed_block_and_a_sequence_tail_first() -> None:
    cache = PrefixCache(4, B)
    a, b = [1, 2, 3, 4, 5, 6, 7, 8], [11, 12, 13, 14, 15, 16, 17, 18]
    run(cache, a)  # blocks 0, 1; freed tail first: the free queue is 2, 3, 1, 0
    run(cache, b)  # blocks 2, 3; the free queue is 1, 0, 3, 2
    cache.drain_events()
    run(cache, [21, 22, 23, 24, 25, 26, 27, 28])  # takes 1 (a's second block), then 0 (a's first)
    ha = block_hashes(a, B)
    assert cache.drain_events()[0] == Removed([ha[1], ha[0]])
    assert run(cache, b) == 4  # b survived
    assert run(cache, a) == 0


def test_blocks_in_use_are_never_evicted_and_a_request_waits_for_them() -> None:
    cache = PrefixCache(4, B)
    running = cache.allocate(8, block_hashes(list(range(8)), B), 12)  # three blocks, held
    assert running is not None and cache.usage() == 0.75
    assert cache.allocate(8, block_hashes(list(range(50, 58)), B), 8) is None  # needs 2, one is free
    cache.free(running)
    assert cache.usage() == 0.0
    assert cache.allocate(8, block_hashes(list(range(50, 58)), B), 8) is not None


def test_a_hit_on_a_free_block_takes_it_out_of_the_free_queue() -> None:
    cache = PrefixCache(3, B)
    prompt = list(range(9))  # blocks 0, 1 hashed, block 2 partial
    run(cache, prompt)
    allocation = cache.allocate(9, block_hashes(prompt, B), 12)  # hits 2, needs 1 more: the only other free one
    assert allocation is not None and allocation.hits == 2
    assert cache.free_blocks() == 0


def test_reset_is_refused_while_blocks_are_in_use() -> None:
    cache = PrefixCache(4, B)
    held = cache.allocate(8, block_hashes(list(range(8)), B), 8)
    assert held is not None and not cache.reset()
    cache.cache_full_blocks(held, list(range(8)), block_hashes(list(range(8)), B), 0)
    cache.free(held)
    cache.drain_events()
    assert cache.reset()
    assert cache.drain_events() == [Cleared()]
    assert cache.cached_prefix(block_hashes(list(range(8)), B)) == 0


def test_a_hybrid_models_groups_share_the_pool_so_it_caches_a_groups_share_of_it() -> None:
    # 18 blocks shared by 3 KV-cache groups hold 6 blocks of tokens: two prompts of 3 blocks each fit, a third
    # evicts the first (as 6 blocks and one group would), where one group would keep all three.
    cache, whole = PrefixCache(18, B, groups=3), PrefixCache(18, B)
    a, b, c = [1, 2, 3, 4, 5, 6, 7, 8], [11, 12, 13, 14, 15, 16, 17, 18], [21, 22, 23, 24, 25, 26, 27, 28]
    for each in (cache, whole):
        for prompt in (a, b, c):
            run(each, prompt + [0])
    assert run(cache, b + [0]) == 8 and run(cache, a + [0]) == 0
    assert run(whole, a + [0]) == 8
    assert cache.allocate(4, block_hashes([9, 9, 9, 9], B), 28) is None  # 7 blocks of tokens: more than it holds
