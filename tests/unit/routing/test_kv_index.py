"""The KV index: stored blocks found by our own chained keys, removals, clears, gaps, restarts, the bound."""

from __future__ import annotations

from gateway.routing.kv_index import Cleared, KvIndex, Removed, Stored, Verdict, block_keys

A, B = "http://a:8000", "http://b:8000"
SIZE = 4
PROMPT = list(range(100, 116))  # four blocks


def stored(tokens: list[int], hashes: list[int], parent: int | None = None, **kw: object) -> Stored:
    return Stored(hashes, parent, tokens, SIZE, **kw)  # type: ignore[arg-type]


def test_a_stored_sequence_is_found_by_the_prompts_own_keys() -> None:
    index = KvIndex(max_blocks=100)
    # vLLM's hashes are opaque to us (here 11, 12, ...; bytes work the same): only the tokens make our keys.
    assert index.apply(A, 0, 1.0, [stored(PROMPT[:8], [11, 12])]) is Verdict.APPLIED
    assert index.apply(A, 1, 2.0, [stored(PROMPT[8:12], [b"\x13"], parent=12)]) is Verdict.APPLIED
    keys = block_keys(PROMPT, SIZE)
    assert len(keys) == 4
    assert index.matched(keys, {A, B}) == {A: 3}
    assert index.by_block_size([A, B]) == {SIZE: {A}} and index.synced(A) and not index.synced(B)
    assert index.events_applied == 2 and index.size == 3
    index.apply(B, 0, 1.0, [])  # synced, with nothing cached yet: its block size is not known
    assert index.by_block_size([A, B]) == {SIZE: {A}, 0: {B}}


def test_only_a_leading_run_counts() -> None:
    index = KvIndex(max_blocks=100)
    index.apply(A, 0, 1.0, [stored(PROMPT[:12], [1, 2, 3])])
    other = [7, 7, 7, 7, *PROMPT[4:]]  # same later tokens, another first block: other keys all along
    assert index.matched(block_keys(other, SIZE), {A}) == {}
    assert index.matched(block_keys(PROMPT[:6], SIZE), {A}) == {A: 1}  # a partial block is never a key


def test_each_instance_gets_the_depth_where_its_own_run_ends() -> None:
    index = KvIndex(max_blocks=100)
    C = "http://c:8000"
    index.apply(A, 0, 1.0, [stored(PROMPT, [1, 2, 3, 4])])  # all four blocks
    index.apply(B, 0, 1.0, [stored(PROMPT[:8], [1, 2])])  # the first two
    index.apply(C, 0, 1.0, [stored(PROMPT[:4], [1]), stored(PROMPT[8:12], [3], parent=9)])  # 1, then a stray
    assert index.matched(block_keys(PROMPT, SIZE), {A, B, C, "http://d:8000"}) == {
        A: 4,
        B: 2,
        C: 1,
    }  # d holds none: left out
    assert index.matched([], {A}) == {}
    index.apply(B, 1, 2.0, [stored(PROMPT[8:], [3, 4], parent=2)])  # now B holds all four too
    assert index.matched(block_keys(PROMPT, SIZE), {A, B, C}) == {A: 4, B: 4, C: 1}
    assert index.matched(block_keys(PROMPT, SIZE), set()) == {}


def test_each_instance_stops_at_its_own_first_missing_block() -> None:
    index = KvIndex(max_blocks=100)
    C = "http://c:8000"
    for instance in (A, B, C):
        index.apply(instance, 0, 1.0, [stored(PROMPT[:12], [1, 2, 3])])
    index.apply(B, 1, 2.0, [Removed([2])])  # B: blocks 1 and 3 (a hole at 2)
    index.apply(C, 1, 2.0, [Removed([3])])  # C: blocks 1 and 2
    # holders: block 1 {A, B, C}, block 2 {A, C}, block 3 {A, B}: 2 and 3 alike in number, not in members
    assert index.matched(block_keys(PROMPT, SIZE), {A, B, C}) == {A: 3, B: 1, C: 2}


def test_holders_found_before_are_read_again_only_while_they_are_the_keys_own() -> None:
    index = KvIndex(max_blocks=100)
    keys, found = block_keys(PROMPT, SIZE), []  # type: ignore[var-annotated]
    index.apply(A, 0, 1.0, [stored(PROMPT, [1, 2, 3, 4])])
    index.apply(B, 0, 1.0, [stored(PROMPT, [1, 2, 3, 4])])
    assert index.matched(keys, {A, B}, found) == {A: 4, B: 4} and len(found) == 4
    assert index.matched(keys, {A, "http://c:8000"}, found) == {A: 4}  # of the instances asked about only
    index.apply(A, 1, 2.0, [Removed([3, 4])])  # the holders found change
    assert index.matched(keys, {A, B}, found) == {A: 2, B: 4}
    index.apply(B, 1, 2.0, [Removed([3, 4])])  # blocks 3 and 4 leave the index, and their dicts with them
    index.apply(A, 2, 3.0, [stored(PROMPT[8:], [5, 6], parent=2)])  # ... back, held by A, in new dicts
    assert index.matched(keys, {A, B}, found) == {A: 4, B: 2} == index.matched(keys, {A, B})
    index.apply(A, 3, 4.0, [Cleared()])
    assert index.matched(keys, {A, B}, found) == {B: 2} == index.matched(keys, {A, B})


def test_a_lora_adapters_blocks_do_not_match_the_base_model() -> None:
    index = KvIndex(max_blocks=100)
    index.apply(A, 0, 1.0, [stored(PROMPT[:8], [1, 2], lora_name="sql")])
    assert index.matched(block_keys(PROMPT, SIZE), {A}) == {}
    assert index.matched(block_keys(PROMPT, SIZE, "sql"), {A}) == {A: 2}


def test_removal_and_clear() -> None:
    index = KvIndex(max_blocks=100)
    index.apply(A, 0, 1.0, [stored(PROMPT[:12], [1, 2, 3])])
    index.apply(B, 0, 1.0, [stored(PROMPT[:12], [1, 2, 3])])
    index.apply(A, 1, 2.0, [Removed([2])])
    keys = block_keys(PROMPT, SIZE)
    assert index.matched(keys, {A, B}) == {A: 1, B: 3}
    index.apply(B, 1, 2.0, [Cleared()])
    assert index.matched(keys, {A, B}) == {A: 1}
    assert index.size == 2  # A's blocks 1 and 3 (3 is unreachable from the prompt's start now)


def test_a_block_whose_parent_we_never_saw_is_skipped() -> None:
    index = KvIndex(max_blocks=100)
    index.apply(A, 0, 1.0, [stored(PROMPT[4:8], [2], parent=1)])
    assert index.size == 0 and index.skipped == 1


def test_groups_hold_the_same_hash_apart() -> None:
    """A hybrid model stores a block in two groups under one hash; removing it from one leaves the other."""
    index = KvIndex(max_blocks=100)
    index.apply(A, 0, 1.0, [stored(PROMPT[:4], [1], group=0), stored(PROMPT[:4], [1], group=1)])
    index.apply(A, 1, 2.0, [Removed([1], group=1)])
    assert index.matched(block_keys(PROMPT, SIZE), {A}) == {A: 1}
    index.apply(A, 2, 3.0, [Removed([1], group=0)])
    assert index.matched(block_keys(PROMPT, SIZE), {A}) == {}


def test_sequence_gaps_duplicates_and_restarts_are_told_apart() -> None:
    index = KvIndex(max_blocks=100)
    assert index.apply(A, 0, 10.0, [stored(PROMPT[:4], [1])]) is Verdict.APPLIED
    assert index.apply(A, 2, 12.0, [stored(PROMPT[4:8], [2], parent=1)]) is Verdict.GAP  # 1 is missing
    assert index.size == 1 and index.next_seq(A) == 1  # not applied
    assert index.apply(A, 0, 10.0, []) is Verdict.DUPLICATE  # a replay overlapping what we have
    assert index.apply(A, 0, 50.0, []) is Verdict.RESTART  # numbered from 0 again, later: a new publisher
    index.drop(A)
    assert index.size == 0 and not index.synced(A) and index.next_seq(A) == 0
    assert index.apply(A, 0, 50.0, [stored(PROMPT[:4], [9])]) is Verdict.APPLIED
    assert index.matched(block_keys(PROMPT, SIZE), {A}) == {A: 1}


def test_memory_is_bounded_by_dropping_the_oldest_of_the_largest() -> None:
    index = KvIndex(max_blocks=5)
    index.apply(B, 0, 1.0, [stored(PROMPT[:4], [1])])
    for seq in range(10):  # A stores ten one-block sequences
        tokens = [seq] * SIZE
        index.apply(A, seq, float(seq), [stored(tokens, [100 + seq])])
    assert index.size == 5
    assert index.blocks(A) == 4 and index.blocks(B) == 1
    assert index.matched(block_keys([9] * SIZE, SIZE), {A}) == {A: 1}  # the newest is kept
    assert index.matched(block_keys([0] * SIZE, SIZE), {A}) == {}  # the oldest went
    assert index.matched(block_keys(PROMPT, SIZE), {B}) == {B: 1}


def test_forget_drops_an_instance_that_left() -> None:
    index = KvIndex(max_blocks=100)
    index.apply(A, 0, 1.0, [stored(PROMPT[:8], [1, 2])])
    index.forget(A)
    assert index.size == 0 and index.matched(block_keys(PROMPT, SIZE), {A}) == {}
