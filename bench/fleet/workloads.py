"""The suite's workloads, generated from a seed, and the offline oracle that bounds their cache hit rate.

A workload is a list of sessions; a session starts at a simulated time and sends its turns one after the
other, each after the answer to the one before and a think time, its history growing (the answers come back
into the next prompt). One-turn sessions make an open-loop stream of requests.

- `shared`: (a) llm-d's "prefix cache aware" shape (inference-perf's shared_prefix): G groups of U users, each
  group with its own long system prompt; each request is the group's prompt and a fresh question.
- `sessions`: (b) multi-turn chat, ShareGPT-like: a few shared system prompts (the apps a fleet serves), turns
  per session 1 + geometric (mean 4), user messages log-normal (median 60 tokens), answers log-normal
  (median 200 tokens), as the ShareGPT conversations vLLM's benchmarks sample from are distributed.
- `hot`: (c) one system prompt for every request, more traffic than one instance can serve.
- `churn`: (d) `sessions`, while instances are added (a scale-up) and then removed (a rollout).

The pooled hit rate replays every prompt of the workload, in arrival order, through one prefix cache of the
whole fleet's blocks (N x C) with vLLM's eviction, one request at a time: no load bound and no split of the
blocks over instances. The oracle is the pooled hit rate less what a fleet under the routers' load bound
must prefill more than once: an instance may serve at most `load_factor` x R / N of the R requests (m), so a
system prompt that P requests share is held by at least ceil(P / m) instances, and every instance past a
prompt's first prefills that prompt's full blocks once; those prefills are taken off the pooled hits. No
routing under the bound can be expected to beat the oracle (LRU is not optimal, so it is a bound in
practice, not a theorem). The ceiling is the hit rate with an unbounded
cache and no load bound: the reuse the trace has at all.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from bench.fleet import text
from bench.fleet.cache import PrefixCache, block_hashes

WORKLOADS = ("shared", "sessions", "hot", "churn")
MAX_TURNS = 8


@dataclass(frozen=True)
class Turn:
    user: str
    max_tokens: int
    think_s: float  # simulated seconds after the previous answer


@dataclass
class Session:
    start_s: float
    system: str
    turns: list[Turn] = field(default_factory=list)

    def messages(self, upto: int) -> list[dict[str, Any]]:
        """The chat of turn `upto`: the system prompt, the earlier turns with their answers, the new question."""
        out: list[dict[str, Any]] = [{"role": "system", "content": self.system}]
        for turn in self.turns[:upto]:
            out.append({"role": "user", "content": turn.user})
            out.append({"role": "assistant", "content": text.output_text(turn.max_tokens)})
        out.append({"role": "user", "content": self.turns[upto].user})
        return out


@dataclass(frozen=True)
class Shape:
    """How big a workload is for a fleet of `instances`; `rate` is per instance, in simulated requests/s."""

    instances: int
    requests: int
    rate_per_instance: float = 3.0
    system_tokens: int = 2048
    question_tokens: int = 256
    output_tokens: int = 128
    groups_per_instance: int = 3
    apps: int = 8  # shared system prompts of the multi-turn workload
    session_system_tokens: int = 768
    think_s: float = 2.0  # a person reads for longer: compressed so that a run ends within minutes


def _words(rng: random.Random, count: int, tag: str) -> str:
    """`count` distinct-looking words (one token each); `tag` starts the text so prompts differ from their start."""
    return " ".join([tag, *(f"w{rng.randrange(1_000_000)}" for _ in range(count - 1))])


def _lognormal(rng: random.Random, median: float, sigma: float, low: int, high: int) -> int:
    return max(low, min(high, round(rng.lognormvariate(math.log(median), sigma))))


def shared(shape: Shape, seed: int) -> list[Session]:
    rng = random.Random(seed)
    groups = [
        _words(rng, shape.system_tokens, f"[group-{seed}-{g}]")
        for g in range(shape.groups_per_instance * shape.instances)
    ]
    rate = shape.rate_per_instance * shape.instances
    out, now = [], 0.0
    for _ in range(shape.requests):
        now += rng.expovariate(rate)
        turn = Turn(_words(rng, shape.question_tokens, "q"), shape.output_tokens, 0.0)
        out.append(Session(now, rng.choice(groups), [turn]))
    return out


def hot(shape: Shape, seed: int) -> list[Session]:
    rng = random.Random(seed)
    system = _words(rng, shape.system_tokens, f"[hot-{seed}]")
    rate = shape.rate_per_instance * shape.instances
    out, now = [], 0.0
    for _ in range(shape.requests):
        now += rng.expovariate(rate)
        out.append(Session(now, system, [Turn(_words(rng, shape.question_tokens, "q"), shape.output_tokens, 0.0)]))
    return out


def sessions(shape: Shape, seed: int) -> list[Session]:
    """Sessions arrive as a Poisson stream sized so that their turns come at `rate` a second in all."""
    rng = random.Random(seed)
    apps = [_words(rng, shape.session_system_tokens, f"[app-{seed}-{a}]") for a in range(shape.apps)]
    mean_turns = 4.0
    session_rate = shape.rate_per_instance * shape.instances / mean_turns
    out: list[Session] = []
    now, total = 0.0, 0
    while total < shape.requests:
        now += rng.expovariate(session_rate)
        turns = min(MAX_TURNS, 1 + int(rng.expovariate(1 / (mean_turns - 1))), shape.requests - total)
        session = Session(now, rng.choice(apps))
        for index in range(turns):
            user = _words(rng, _lognormal(rng, 60, 1.0, 4, 1000), "u")
            answer = _lognormal(rng, 200, 0.7, 8, 800)
            think = 0.0 if index == 0 else rng.expovariate(1 / shape.think_s)
            session.turns.append(Turn(user, answer, think))
        total += turns
        out.append(session)
    return out


def build(name: str, shape: Shape, seed: int) -> list[Session]:
    if name == "shared":
        return shared(shape, seed)
    if name == "hot":
        return hot(shape, seed)
    return sessions(shape, seed)  # sessions and churn


def nominal_order(workload: list[Session]) -> list[tuple[list[int], int]]:
    """Every prompt's token ids and answer length, ordered by when it would arrive if each answer took a
    nominal second."""
    timed = []
    for session in workload:
        at = session.start_s
        for index, turn in enumerate(session.turns):
            at += turn.think_s + (1.0 if index else 0.0)
            timed.append((at, session, index))
    timed.sort(key=lambda item: item[0])
    return [(text.render_chat(s.messages(i)), s.turns[i].max_tokens) for _, s, i in timed]


def repeat_prefills(workload: list[Session], instances: int, load_factor: float, block_size: int = 16) -> int:
    """The fewest tokens of system prompts that `instances` under the load bound prefill past each prompt's
    first time (module docstring)."""
    requests: dict[str, int] = {}
    for session in workload:
        requests[session.system] = requests.get(session.system, 0) + len(session.turns)
    most = load_factor * sum(requests.values()) / instances  # requests an instance may serve
    repeats = 0
    for system, count in requests.items():
        blocks = len(text.render_chat([{"role": "system", "content": system}], False)) // block_size
        repeats += (math.ceil(count / most) - 1) * blocks * block_size
    return repeats


def oracle(
    workload: list[Session], blocks: int, block_size: int = 16, instances: int = 1, load_factor: float = 1.5
) -> dict[str, float]:
    """The hit rates of one cache of `blocks` (the fleet's; pooled), of the same less the repeated prefills
    that `instances` under the load bound cannot avoid (oracle), and of an unbounded cache (ceiling)."""
    pooled = PrefixCache(blocks, block_size)
    seen: set[int] = set()
    queries = pooled_hits = ceiling_hits = 0
    for prompt, answer in nominal_order(workload):
        hashes = block_hashes(prompt, block_size)
        most = (len(prompt) - 1) // block_size
        ceiling = 0
        for h in hashes[:most]:
            if h not in seen:
                break
            ceiling += 1
        queries += len(prompt)
        ceiling_hits += ceiling * block_size
        whole = prompt + [text.OUTPUT_TOKEN] * answer  # answers are cached too, as the engine caches them
        whole_hashes = block_hashes(whole, block_size)
        seen.update(whole_hashes)
        allocation = pooled.allocate(len(prompt), hashes, len(whole))
        if allocation is None:  # a prompt larger than the whole fleet's cache: counted as a miss
            continue
        pooled_hits += allocation.hits * block_size
        pooled.cache_full_blocks(allocation, whole, whole_hashes, allocation.hits)
        pooled.free(allocation)
        pooled.drain_events()
    repeats = repeat_prefills(workload, instances, load_factor, block_size)
    return {
        "oracle_hit_rate": max(0, pooled_hits - repeats) / queries,
        "pooled_hit_rate": pooled_hits / queries,
        "ceiling_hit_rate": ceiling_hits / queries,
    }
