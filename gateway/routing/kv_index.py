"""Which instance holds which prompt blocks in its KV cache, from the instances' own KV events.

vLLM announces every block it caches (BlockStored: the blocks' hashes, their parent's hash and their token
ids) and every block it evicts (BlockRemoved: hashes only), in numbered batches. We never reproduce vLLM's
own hash: each stored block gets a key of ours, chained from its parent's key and its tokens, the same way a
request's prompt blocks are keyed (`block_keys`). Each instance keeps a map from vLLM's hash to our key, so a
removal, which names vLLM's hash only, finds the key to drop.

Sequence numbers tell whether a batch follows the last one applied. `apply` does not apply a batch that
leaves a gap or that comes from a restarted publisher (its numbers start again at 0, with a later clock);
the subscriber re-syncs then (gateway.routing.kv_events). Memory is bounded: past `max_blocks` entries in
all, the oldest entries of the instance holding the most are dropped.
"""

from __future__ import annotations

import enum
import random
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Union

EngineHash = Union[int, bytes]  # noqa: UP007 (vLLM sends either)
Key = int  # our key of a block: see `chained`
ROOT = b"tokenyard-kv"
_NOBODY: dict[str, int] = {}
_SIGNATURE = ""  # in a key's holders: their tags XORed (see KvIndex.matched); no instance has this name


def chained(parent: Key, tokens: Sequence[int], block_size: int) -> list[Key]:
    """Our key of each full block of `tokens` after the block keyed `parent`, each chained from the one before.

    A key is Python's own hash of (the parent's key, the block's token ids packed as int64 bytes): 64 bits,
    the bytes hashed with SipHash under the process's random seed. The index lives in one process and its
    keys are never stored or sent, so a key need only agree with itself within the process, and a client
    cannot aim at a collision without the seed (one would cost a cache miss, not a wrong answer). This runs
    for every routed request and every stored block: the tokens are packed once, a block is a slice."""
    packed = array("q", tokens).tobytes()
    width = 8 * block_size
    keys: list[Key] = []
    for start in range(0, len(tokens) // block_size * width, width):
        parent = hash((parent, packed[start : start + width]))
        keys.append(parent)
    return keys


def root_key(lora_name: str | None) -> Key:
    """The parent of a sequence's first block: blocks of a LoRA adapter never match the base model's."""
    return hash((ROOT, lora_name or ""))


def block_keys(tokens: Sequence[int], block_size: int, lora_name: str | None = None) -> list[Key]:
    """Our key of each full block of `tokens` (a partial block is never cached)."""
    return chained(root_key(lora_name), tokens, block_size)


@dataclass(frozen=True)
class Stored:
    block_hashes: Sequence[EngineHash]
    parent_block_hash: EngineHash | None
    token_ids: Sequence[int]
    block_size: int
    lora_name: str | None = None
    group: int | None = None


@dataclass(frozen=True)
class Removed:
    block_hashes: Sequence[EngineHash]
    group: int | None = None


@dataclass(frozen=True)
class Cleared:
    pass


Event = Union[Stored, Removed, Cleared]  # noqa: UP007


class Verdict(enum.Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"  # already applied (a replay overlapping the live stream)
    GAP = "gap"  # batches are missing before this one
    RESTART = "restart"  # the publisher started again


@dataclass
class _Held:
    """One instance's cached blocks: (group, vLLM's hash) -> our key, oldest first."""

    keys: OrderedDict[tuple[int | None, EngineHash], Key] = field(default_factory=OrderedDict)
    next_seq: int = 0
    last_ts: float = float("-inf")
    block_size: int | None = None
    synced: bool = False  # a batch has been applied since the last drop
    tag: int = field(default_factory=lambda: random.getrandbits(64))  # its share of a key's holders' signature


class KvIndex:
    def __init__(self, max_blocks: int) -> None:
        self.max_blocks = max_blocks
        self._held: dict[str, _Held] = {}
        self._holders: dict[Key, dict[str, int]] = {}  # our key -> instance -> references (one per group)
        # ... and _SIGNATURE -> the holders' tags XORed: which instances hold the key, in one number
        self.size = 0  # entries over all instances
        self.events_applied = 0
        self.resyncs = 0  # counted by the subscribers, which do them
        self.skipped = 0  # stored blocks whose parent we never saw, or whose tokens do not fill their blocks

    # -- what the router asks -------------------------------------------------------

    def synced(self, instance: str) -> bool:
        held = self._held.get(instance)
        return bool(held and held.synced)

    def by_block_size(self, instances: Iterable[str]) -> dict[int, list[str]]:
        """The synced ones of `instances`, by the block size they cache in (instances may differ)."""
        out: dict[int, list[str]] = {}
        for instance in instances:
            held = self._held.get(instance)
            if held is not None and held.synced and held.block_size:
                out.setdefault(held.block_size, []).append(instance)
        return out

    def blocks(self, instance: str) -> int:
        held = self._held.get(instance)
        return len(held.keys) if held else 0

    def matched(self, keys: Sequence[Key], instances: Iterable[str]) -> dict[str, int]:
        """How many of the leading `keys` each instance holds, all of them in a row.

        This runs on every routed request, over every instance, with the index mostly out of the CPU's caches,
        so it touches little. While several instances still match, a key whose holders have the signature and
        count of the key before's (a system prompt held by the same instances) is passed at that; another
        costs a subset test in C, and a set only when an instance drops out. Once one instance is left, a key
        costs one lookup. (Another set of holders with the same signature and count: odds of 2^-64 a key.)"""
        depth = dict.fromkeys(instances, 0)
        alive = set(depth)
        holders_of = self._holders.get
        reached, checked = 0, None  # (signature, count) of a key's holders known to include all of `alive`
        for key in keys:
            if len(alive) <= 1:
                break
            holders = holders_of(key, _NOBODY)
            seen = (holders.get(_SIGNATURE), len(holders))
            if seen != checked:
                if not holders.keys() >= alive:
                    kept = alive.intersection(holders)
                    for gone in alive - kept:
                        depth[gone] = reached
                    alive = kept
                    if not alive:
                        break
                checked = seen
            reached += 1
        for only in alive:  # one left (or several, holding every key)
            for key in keys[reached:] if len(alive) == 1 else ():
                if only not in holders_of(key, _NOBODY):
                    break
                reached += 1
            depth[only] = reached
        return depth

    # -- what the subscriber feeds --------------------------------------------------

    def apply(self, instance: str, seq: int, ts: float, events: Iterable[Event]) -> Verdict:
        held = self._held.setdefault(instance, _Held())
        if seq < held.next_seq:
            return Verdict.RESTART if ts > held.last_ts else Verdict.DUPLICATE
        if seq > held.next_seq:
            return Verdict.GAP
        for event in events:
            self._apply_one(instance, held, event)
            self.events_applied += 1
        held.next_seq, held.last_ts, held.synced = seq + 1, ts, True
        return Verdict.APPLIED

    def next_seq(self, instance: str) -> int:
        held = self._held.get(instance)
        return held.next_seq if held else 0

    def drop(self, instance: str, next_seq: int = 0) -> None:
        """Forget what the instance holds, and take its batches again from `next_seq`."""
        held = self._held.setdefault(instance, _Held())
        self._clear(instance, held)
        held.next_seq, held.last_ts, held.synced = next_seq, float("-inf"), False

    def forget(self, instance: str) -> None:
        """The instance left the route."""
        held = self._held.pop(instance, None)
        if held is not None:
            self._clear(instance, held)

    # -- internals ------------------------------------------------------------------

    def _apply_one(self, instance: str, held: _Held, event: Event) -> None:
        if isinstance(event, Stored):
            self._store(instance, held, event)
        elif isinstance(event, Removed):
            for engine_hash in event.block_hashes:
                key = held.keys.pop((event.group, engine_hash), None)
                if key is not None:
                    self._unref(instance, held, key)
        else:
            self._clear(instance, held)

    def _store(self, instance: str, held: _Held, event: Stored) -> None:
        size = event.block_size
        if size <= 0 or len(event.token_ids) != size * len(event.block_hashes):
            self.skipped += len(event.block_hashes)
            return
        if event.parent_block_hash is None:
            parent: Key | None = root_key(event.lora_name)
        else:
            parent = held.keys.get((event.group, event.parent_block_hash))
        if parent is None:  # its parent was evicted, or came before we listened
            self.skipped += len(event.block_hashes)
            return
        held.block_size = size
        for engine_hash, key in zip(event.block_hashes, chained(parent, event.token_ids, size)):
            entry = (event.group, engine_hash)
            if entry in held.keys:
                held.keys.move_to_end(entry)
                continue
            held.keys[entry] = key
            refs = self._holders.get(key)
            if refs is None:
                refs = self._holders[key] = {_SIGNATURE: 0}
            if instance not in refs:
                refs[instance] = 0
                refs[_SIGNATURE] ^= held.tag
            refs[instance] += 1
            self.size += 1
        while self.size > self.max_blocks:
            self._evict_one()

    def _evict_one(self) -> None:
        name, held = max(self._held.items(), key=lambda item: len(item[1].keys))
        _, key = held.keys.popitem(last=False)
        self._unref(name, held, key)

    def _unref(self, instance: str, held: _Held, key: Key) -> None:
        self.size -= 1
        refs = self._holders.get(key)
        if refs is None or instance not in refs:
            return
        refs[instance] -= 1
        if refs[instance] <= 0:
            del refs[instance]
            refs[_SIGNATURE] ^= held.tag
            if len(refs) == 1:  # the signature alone
                del self._holders[key]

    def _clear(self, instance: str, held: _Held) -> None:
        for key in held.keys.values():
            self._unref(instance, held, key)
        held.keys.clear()
