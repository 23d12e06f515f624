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
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Union

EngineHash = Union[int, bytes]  # noqa: UP007 (vLLM sends either)
Key = int  # our key of a block: see `chained`
ROOT = b"tokenyard-kv"
_SIGNATURE = ""  # in a key's holders: their tags XORed (see KvIndex.matched); no instance has this name
_NOBODY = {_SIGNATURE: -1}  # the holders of a key nobody holds (tags are never negative)


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


# Events are made for every batch of every instance: plain slotted classes, which are made four times faster
# than frozen ones (not changed once made all the same).
@dataclass(slots=True)
class Stored:
    block_hashes: Sequence[EngineHash]
    parent_block_hash: EngineHash | None
    token_ids: Sequence[int]
    block_size: int
    lora_name: str | None = None
    group: int | None = None


@dataclass(slots=True)
class Removed:
    block_hashes: Sequence[EngineHash]
    group: int | None = None


@dataclass(slots=True)
class Cleared:
    pass


Event = Union[Stored, Removed, Cleared]  # noqa: UP007


class Verdict(enum.Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"  # already applied (a replay overlapping the live stream)
    GAP = "gap"  # batches are missing before this one
    RESTART = "restart"  # the publisher started again


Entry = Union[EngineHash, tuple[int, EngineHash]]  # noqa: UP007 (a block of group None: its hash alone)


def _entry(group: int | None, engine_hash: EngineHash) -> Entry:
    """A block's name in its instance's map: vLLM's hash, with its group where it has one (hybrid models).
    A hash alone for group None, the usual case: no tuple to make, or hash, for every block of every event."""
    return engine_hash if group is None else (group, engine_hash)


@dataclass(slots=True)
class _Held:
    """One instance's cached blocks: _entry(group, vLLM's hash) -> our key, oldest first (a dict keeps order)."""

    keys: dict[Entry, Key] = field(default_factory=dict)
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

    def by_block_size(self, instances: Iterable[str]) -> dict[int, set[str]]:
        """The synced ones of `instances`, by the block size they cache in (instances may differ); 0 for those
        that have cached nothing yet, so their size is not known."""
        out: dict[int, set[str]] = {}
        for instance in instances:
            held = self._held.get(instance)
            if held is not None and held.synced:
                out.setdefault(held.block_size or 0, set()).add(instance)
        return out

    def block_size(self, instance: str) -> int | None:
        held = self._held.get(instance)
        return held.block_size if held else None

    def blocks(self, instance: str) -> int:
        held = self._held.get(instance)
        return len(held.keys) if held else 0

    def matched(
        self, keys: Sequence[Key], instances: AbstractSet[str], found: list[dict[str, int]] | None = None
    ) -> dict[str, int]:
        """How many of the leading `keys` each of `instances` holds, all of them in a row, for those holding
        the first (an instance holding none is left out).

        This runs on every routed request, with the index mostly out of the CPU's caches, so it touches
        little: the instances holding the first key (a few, of however many there are), then, while several
        still match, a key whose holders have the signature of the key before's (a system prompt held by the
        same instances) is passed at that; another costs a subset test in C, and a set only when an instance
        drops out. (Another set of holders with the same signature: odds of 2^-64 a key.)

        `found`: where a caller matching the same keys again (a kept prompt: a shared system prompt comes back
        with every request) keeps the holders found for them, the index's own dicts, so the next match reads
        them without looking the keys up. A dict leaves the index with its last holder, its signature 0 from
        then on, and is never changed again: one whose signature is not 0 is still the key's."""
        found = [] if found is None else found
        if len(found) == len(keys) and keys:  # every key found before: at once, when the same ones hold them all
            signatures = {holders[_SIGNATURE] for holders in found}
            if len(signatures) == 1 and (first := found[0])[_SIGNATURE] > 0:
                return {instance: len(keys) for instance in first if instance in instances}
        holders_of = self._holders.get
        depth: dict[str, int] = {}
        alive: set[str] | None = None  # the instances holding every key so far
        reached, checked = 0, None  # the signature of a key's holders known to include all of `alive`
        for key in keys:
            holders = found[reached] if reached < len(found) else _NOBODY
            seen = holders[_SIGNATURE]
            if seen <= 0:  # not found before, or no longer the key's (nobody holds it: _NOBODY's is -1)
                holders = holders_of(key, _NOBODY)
                seen = holders[_SIGNATURE]
                if reached < len(found):
                    found[reached] = holders
                else:  # every key before was found (a key nobody holds ends the walk)
                    found.append(holders)
            if seen != checked:
                if alive is None:
                    alive = {instance for instance in holders if instance in instances}
                elif not holders.keys() >= alive:
                    kept = alive.intersection(holders)
                    for gone in alive - kept:
                        depth[gone] = reached
                    alive = kept
                if not alive:
                    break
                checked = seen
            reached += 1
        for instance in alive or ():  # those holding every key
            depth[instance] = reached
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
            pop, group = held.keys.pop, event.group
            gone = (pop(h if group is None else (group, h), None) for h in event.block_hashes)  # _entry, inlined
            self._unref(instance, held, [key for key in gone if key is not None])
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
            parent = held.keys.get(_entry(event.group, event.parent_block_hash))
        if parent is None:  # its parent was evicted, or came before we listened
            self.skipped += len(event.block_hashes)
            return
        held.block_size = size
        # Every block of every instance's events comes through here: names are looked up once, outside.
        keys, holders, tag, group, added = held.keys, self._holders, held.tag, event.group, 0
        for engine_hash, key in zip(event.block_hashes, chained(parent, event.token_ids, size)):
            entry = engine_hash if group is None else (group, engine_hash)  # _entry, inlined: a call a block costs
            if entry in keys:  # stored again: now the newest
                keys[entry] = keys.pop(entry)
                continue
            keys[entry] = key
            added += 1
            refs = holders.get(key)
            if refs is None:
                holders[key] = {_SIGNATURE: tag, instance: 1}
            elif (count := refs.get(instance)) is None:
                refs[instance] = 1
                refs[_SIGNATURE] ^= tag
            else:
                refs[instance] = count + 1
        self.size += added
        while self.size > self.max_blocks:
            self._evict_one()

    def _evict_one(self) -> None:
        name, held = max(self._held.items(), key=lambda item: len(item[1].keys))
        self._unref(name, held, [held.keys.pop(next(iter(held.keys)))])

    def _unref(self, instance: str, held: _Held, keys: Sequence[Key]) -> None:
        """`instance` has dropped entries of these keys (one each), already gone from `held`."""
        holders, tag = self._holders, held.tag
        self.size -= len(keys)
        for key in keys:
            refs = holders.get(key, _NOBODY)
            count = refs.get(instance, 0)
            if count > 1:
                refs[instance] = count - 1
            elif count == 1:
                del refs[instance]
                refs[_SIGNATURE] ^= tag
                if len(refs) == 1:  # the signature alone
                    del holders[key]

    def _clear(self, instance: str, held: _Held) -> None:
        self._unref(instance, held, list(held.keys.values()))
        held.keys.clear()
