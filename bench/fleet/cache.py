"""vLLM's prefix cache as a block pool, close enough that a router cannot tell the difference.

What is modelled (vllm/v1/core/block_pool.py and kv_cache_manager.py): a prompt is cut into blocks of B
tokens; a full block is keyed by a hash chained from its parent's hash and its own tokens. The pool has C
blocks. A block in use by a request is referenced; when the last request using it ends, it goes to the tail
of the free queue but keeps its hash, so a later request with the same prefix finds it (a hit). A request
takes new blocks from the head of the free queue; a cached block taken that way is evicted (BlockRemoved).
A request frees its blocks tail first, so a sequence's last blocks are evicted before its first ones.

As in vLLM, at least one prompt token is always computed (a prompt that is all hits recomputes its last
block), blocks are cached once full (BlockStored, with the parent's hash and the blocks' token ids), and a
block whose hash is already cached is not cached twice. Unlike vLLM, a request reserves the blocks for its
whole output when it is admitted (so nothing is ever preempted), and output blocks are announced when the
request ends rather than as each fills.

A hybrid model (attention types mixed across layers, such as Gemma 3's five sliding-window layers to one
full-attention layer) has several KV-cache groups in vLLM (kv_cache_utils._get_kv_cache_groups_uniform_page_size:
layers of one type split into groups of equal size) and every group draws its blocks from the one pool
(get_kv_cache_config_from_groups: num_blocks is the pool's, num_gpu_blocks_override included). A block of
tokens then costs one block a group, so a pool of C blocks caches C // G blocks of tokens (`groups`, G).
Sliding-window groups are modelled as if they were full-attention ones: vLLM drops their blocks that fall
out of the window and needs only the window's blocks for a hit, so a real hybrid cache holds a little more.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field


def block_hashes(tokens: Sequence[int], block_size: int, parent: int | None = None) -> list[int]:
    """The chained hash of each full block of `tokens`, 63-bit ints (vLLM publishes ints or bytes); `parent`:
    the hash of the block before `tokens[0]`, to go on from a prefix already hashed."""
    out: list[int] = []
    prev = parent or 0
    for start in range(0, len(tokens) - block_size + 1, block_size):
        data = prev.to_bytes(8, "big") + array("q", tokens[start : start + block_size]).tobytes()
        prev = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") >> 1
        out.append(prev)
    return out


@dataclass(frozen=True)
class Stored:
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int


@dataclass(frozen=True)
class Removed:
    block_hashes: list[int]


@dataclass(frozen=True)
class Cleared:
    pass


CacheEvent = Stored | Removed | Cleared


@dataclass
class Allocation:
    """One request's blocks: the leading `hits` were cached already; `blocks` are the physical block ids."""

    hits: int
    blocks: list[int] = field(default_factory=list)


class PrefixCache:
    def __init__(self, num_blocks: int, block_size: int = 16, groups: int = 1) -> None:
        """`num_blocks`: the pool's blocks; `groups`: the model's KV-cache groups sharing them (1 unless hybrid)."""
        if groups < 1 or num_blocks < groups:
            raise ValueError("a pool needs at least one block for each of its groups")
        self.num_blocks, self.block_size = num_blocks // groups, block_size  # blocks of tokens
        self._hash: list[int | None] = [None] * self.num_blocks
        self._refs = [0] * self.num_blocks
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(self.num_blocks))  # head: next to be taken
        self._by_hash: dict[int, int] = {}
        self.events: list[CacheEvent] = []  # drained by the publisher
        self.queries = self.hits = 0  # tokens, as vllm:prefix_cache_queries / _hits count them

    # -- what the scheduler asks ---------------------------------------------------------

    def cached_prefix(self, hashes: Sequence[int]) -> int:
        """How many leading blocks of a prompt are cached (in use or free)."""
        count = 0
        for h in hashes:
            if h not in self._by_hash:
                break
            count += 1
        return count

    def free_blocks(self) -> int:
        return len(self._free)

    def usage(self) -> float:
        """vllm:kv_cache_usage_perc: the share of blocks in use (cached free blocks count as free)."""
        return 1.0 - len(self._free) / self.num_blocks

    def allocate(self, prompt_len: int, hashes: Sequence[int], total_tokens: int) -> Allocation | None:
        """Blocks for a request of `total_tokens` (prompt and output) whose full prompt blocks hash to `hashes`;
        None when the pool cannot give them now (the request waits)."""
        hits = min(self.cached_prefix(hashes), (prompt_len - 1) // self.block_size)
        hit_blocks = [self._by_hash[h] for h in hashes[:hits]]
        need = -(-total_tokens // self.block_size) - hits
        if need > len(self._free) - sum(1 for b in hit_blocks if b in self._free):
            return None
        for block in hit_blocks:
            self._refs[block] += 1
            self._free.pop(block, None)
        removed: list[int] = []
        fresh = []
        for _ in range(need):
            block, _ = self._free.popitem(last=False)
            old = self._hash[block]
            if old is not None:
                del self._by_hash[old]
                self._hash[block] = None
                removed.append(old)
            self._refs[block] = 1
            fresh.append(block)
        if removed:
            self.events.append(Removed(removed))
        self.queries += prompt_len
        self.hits += hits * self.block_size
        return Allocation(hits, hit_blocks + fresh)

    def cache_full_blocks(
        self, allocation: Allocation, tokens: Sequence[int], hashes: Sequence[int], start: int
    ) -> None:
        """Give hashes to the allocation's full blocks from block `start` on (those of `hashes`, which chains over
        `tokens`), announcing them in runs; a block whose hash another request cached meanwhile stays uncached."""
        run: list[int] = []
        run_start = start
        for index in range(start, min(len(hashes), len(allocation.blocks))):
            block, h = allocation.blocks[index], hashes[index]
            if h in self._by_hash or self._hash[block] is not None:
                self._flush(run, run_start, tokens, hashes)
                run, run_start = [], index + 1
                continue
            self._hash[block] = h
            self._by_hash[h] = block
            run.append(h)
        self._flush(run, run_start, tokens, hashes)

    def free(self, allocation: Allocation) -> None:
        """The request ended: its blocks go to the free queue's tail, last block first."""
        for block in reversed(allocation.blocks):
            self._refs[block] -= 1
            if self._refs[block] == 0:
                self._free[block] = None

    def reset(self) -> bool:
        """POST /reset_prefix_cache: drop every cached block; refused (False) while any is in use."""
        if len(self._free) != self.num_blocks:
            return False
        for block, h in enumerate(self._hash):
            if h is not None:
                self._hash[block] = None
        self._by_hash.clear()
        self.events.append(Cleared())
        return True

    def drain_events(self) -> list[CacheEvent]:
        events, self.events = self.events, []
        return events

    def _flush(self, run: list[int], start: int, tokens: Sequence[int], hashes: Sequence[int]) -> None:
        if not run:
            return
        size = self.block_size
        parent = hashes[start - 1] if start > 0 else None
        self.events.append(Stored(run, parent, list(tokens[start * size : (start + len(run)) * size]), size))
