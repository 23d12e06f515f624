"""Suite 3: routing quality. Does cache-aware routing pay off on real engines?

    python -m bench.routing_quality                       # the full suite: minutes of CPU, run it on a quiet machine
    python -m bench.routing_quality --dry-run             # print the workload and the commands, start nothing

Two tokenyard instances in engine mode (Gemma 3 270M on vLLM CPU, prefix caching on, KV events published),
each pinned to its own core, behind one tokenyard router per policy over the same pair: `kv` (the engines'
KV events), `prefix` (a hash of the prompt's start), `least-loaded` and `round-robin`. The workload is many
chat requests that share a few long system prompts. Each phase (one policy, one round) gets system prompts of
its own (a fresh seed), so every policy starts cold and none inherits another's cache; each round rotates
which policy goes first. Reported: TTFT p50/p99, requests/s and output tokens/s per policy, within-round
ratios (kv / prefix, kv / round-robin, prefix / round-robin), and the engines' prefix-cache hit rate from
their /metrics.

Why it can matter: round-robin sends every system prompt to both instances, so each prompt is prefilled twice
and each instance's KV cache must hold all of them; affinity prefills each prompt once and splits the prompts
between the caches. The gap grows as the prompts outgrow one instance's cache (`--kv-blocks`). `prefix` splits
them by a hash, blind to what each cache holds now; `kv` sends each prompt where its blocks are.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.plots import pyplot
from bench.procs import wait_answering

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "gemma-3-270m"
POLICIES = ("kv", "prefix", "least-loaded", "round-robin")
# Within-round ratios reported: (policy, baseline).
PAIRS = (("kv", "prefix"), ("kv", "round-robin"), ("kv", "least-loaded"), ("prefix", "round-robin"))
WORDS = (
    "river stone lantern harbor copper meadow signal orbit ledger canvas thunder velvet quarry beacon "
    "saddle prism harvest glacier compass timber marble falcon cobalt anchor willow ember summit "
).split()


@dataclass
class Workload:
    prompts: int
    prompt_words: int
    requests: int
    concurrency: int
    max_tokens: int


def system_prompts(count: int, words: int, seed: int) -> list[str]:
    """`count` long system prompts, distinct from their first characters (the router hashes the start)."""
    rng = random.Random(seed)
    out = []
    for index in range(count):
        body = " ".join(rng.choice(WORDS) for _ in range(words))
        out.append(f"[{seed}-{index}] You are assistant {index} of set {seed}. Follow these house notes: {body}")
    return out


def requests_for(workload: Workload, seed: int) -> list[list[dict[str, str]]]:
    """The phase's chat requests: every prompt used about equally, in a shuffled order."""
    prompts = system_prompts(workload.prompts, workload.prompt_words, seed)
    rng = random.Random(seed + 1)
    out = [
        [
            {"role": "system", "content": prompts[i % len(prompts)]},
            {"role": "user", "content": f"Question {i}: name one {rng.choice(WORDS)}."},
        ]
        for i in range(workload.requests)
    ]
    rng.shuffle(out)
    return out


@dataclass
class Phase:
    policy: str
    round: int
    requests: int
    errors: int
    wall_s: float
    req_per_s: float
    output_tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    prefix_hit_rate: float | None
    kv_routing: dict[str, Any] | None = None  # policy kv: the router's /ready state after the phase


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def one(client: httpx.AsyncClient, messages: list[dict[str, str]], max_tokens: int) -> tuple[float, int] | None:
    body = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return None
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            if first is None and event.get("choices"):
                first = time.perf_counter()
    return ((first or time.perf_counter()) - started, tokens)


async def drive(
    url: str, requests: list[list[dict[str, str]]], concurrency: int, max_tokens: int
) -> tuple[list[tuple[float, int] | None], float]:
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=900) as client:

        async def bounded(messages: list[dict[str, str]]) -> tuple[float, int] | None:
            async with semaphore:
                return await one(client, messages, max_tokens)

        started = time.perf_counter()
        results = await asyncio.gather(*(bounded(m) for m in requests))
        return results, time.perf_counter() - started


def prefix_counters(urls: list[str]) -> tuple[float, float] | None:
    """(hits, queries) of vLLM's prefix cache summed over the instances, if their /metrics expose them."""
    hits = queries = 0.0
    for url in urls:
        try:
            text = httpx.get(f"{url}/metrics", timeout=10).text
        except httpx.HTTPError:
            return None
        found = {
            name: sum(
                float(v) for v in re.findall(rf"^vllm:prefix_cache_{name}(?:_total)?(?:{{[^}}]*}})? (\S+)$", text, re.M)
            )
            for name in ("hits", "queries")
        }
        if not re.search(r"^vllm:prefix_cache_queries", text, re.M):
            return None
        hits, queries = hits + found["hits"], queries + found["queries"]
    return hits, queries


def kv_state(url: str) -> dict[str, Any] | None:
    try:
        state = httpx.get(f"{url}/ready", timeout=10).json()["models"][MODEL].get("kv_routing")
    except (httpx.HTTPError, ValueError, KeyError):
        return None
    return state if isinstance(state, dict) else None


def kv_phase(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any] | None:
    """The kv router's state after the phase, with its routing decisions counted over this phase only."""
    if after is None:
        return None
    counted = (before or {}).get("decisions") or {}
    return {**after, "decisions": {k: v - counted.get(k, 0) for k, v in (after.get("decisions") or {}).items()}}


def run_phase(policy: str, round_index: int, url: str, instances: list[str], workload: Workload, seed: int) -> Phase:
    before = prefix_counters(instances)
    kv_before = kv_state(url) if policy == "kv" else None
    results, wall = asyncio.run(drive(url, requests_for(workload, seed), workload.concurrency, workload.max_tokens))
    after = prefix_counters(instances)
    kv_after = kv_state(url) if policy == "kv" else None
    done = [r for r in results if r is not None]
    ttfts = [r[0] for r in done]
    hit_rate = None
    if before and after and after[1] > before[1]:
        hit_rate = (after[0] - before[0]) / (after[1] - before[1])
    return Phase(
        policy,
        round_index,
        len(done),
        len(results) - len(done),
        wall,
        len(done) / wall,
        sum(r[1] for r in done) / wall,
        statistics.median(ttfts) * 1000 if ttfts else float("nan"),
        _pct(ttfts, 0.99) * 1000,
        hit_rate,
        kv_phase(kv_before, kv_after),
    )


def engine_config(port: int, kv_blocks: int | None, events_port: int | None = None) -> str:
    extra = f"\n      num_gpu_blocks_override: {kv_blocks}" if kv_blocks else ""
    events = (
        f"    kv_events_endpoint: tcp://*:{events_port}\n    kv_events_replay_endpoint: tcp://*:{events_port + 1}\n"
        if events_port
        else ""
    )
    return (
        f"host: 127.0.0.1\nport: {port}\nlog_level: warning\nmodels:\n  - name: {MODEL}\n"
        f"    model: builtin:gemma3-270m\n    dtype: bfloat16\n    max_model_len: 2048\n{events}    engine_args:\n"
        f"      enforce_eager: true\n      enable_prefix_caching: true{extra}\n"
    )


def router_config(port: int, policy: str, instances: list[str], tokenizer: str | None = None) -> str:
    upstreams = "".join(f"      - {url}\n" for url in instances)
    local = f"    kv_tokenizer: {tokenizer}\n" if tokenizer and policy == "kv" else ""
    return (
        # CPU engines slow with each request they run: no slack on the load bound (docs/router.md).
        f"host: 127.0.0.1\nport: {port}\nlog_level: warning\nrouter:\n  kv_discovery_interval_s: 1\n"
        "  prefix_load_slack: 0\n"
        f"routes:\n  - name: {MODEL}\n    policy: {policy}\n{local}    upstreams:\n{upstreams}"
    )


def launch(config: Path, text: str, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    config.write_text(text)
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


# Gemma 3 270M's KV-cache groups in vLLM: its 18 layers are 15 sliding-window and 3 full-attention ones
# (config.json layer_types), split into groups of 3 layers (the smaller count), so 1 + 5 groups share the pool.
GEMMA3_KV_GROUPS = 6


def launch_sim(port: int, events_port: int, blocks: int, groups: int, log: Path) -> subprocess.Popen[bytes]:
    """Two simulated instances on `port` and the one after, serving MODEL (Suite 4's bench.fleet.server), with
    the real engines' cache: `blocks` of 128 tokens (vLLM CPU's default) shared by Gemma 3's KV-cache groups."""
    return subprocess.Popen(
        [sys.executable, "-m", "bench.fleet.server", "--instances", "2", "--port", str(port)]
        + ["--events-port", str(events_port), "--blocks", str(blocks), "--block-size", "128", "--model", MODEL]
        + ["--kv-groups", str(groups)],
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


RATIO_METRICS = ("ttft_p50_ms", "ttft_p99_ms", "req_per_s", "output_tokens_per_s")


def summarise(phases: list[Phase]) -> dict[str, Any]:
    """Within-round ratios of each pair in PAIRS (policy / baseline) that both ran: median, min, max."""
    by_round: dict[int, dict[str, Phase]] = {}
    for phase in phases:
        by_round.setdefault(phase.round, {})[phase.policy] = phase
    out: dict[str, Any] = {}
    for policy, baseline in PAIRS:
        ratios: dict[str, list[float]] = {metric: [] for metric in RATIO_METRICS}
        for pair in by_round.values():
            if policy in pair and baseline in pair:
                for metric in RATIO_METRICS:
                    ratios[metric].append(getattr(pair[policy], metric) / getattr(pair[baseline], metric))
        stem = f"{policy}_vs_{baseline}".replace("-", "_")
        out.update(
            {
                f"{stem}_{metric.removesuffix('_ms')}": {
                    "median": statistics.median(v),
                    "min": min(v),
                    "max": max(v),
                    "n": len(v),
                }
                for metric, v in ratios.items()
                if v
            }
        )
    return out


def per_policy(phases: list[Phase]) -> dict[str, dict[str, float | None]]:
    """Each policy's medians over the rounds."""
    out: dict[str, dict[str, float | None]] = {}
    for policy in dict.fromkeys(p.policy for p in phases):
        mine = [p for p in phases if p.policy == policy]
        hits = [p.prefix_hit_rate for p in mine if p.prefix_hit_rate is not None]
        out[policy] = {metric: statistics.median(getattr(p, metric) for p in mine) for metric in RATIO_METRICS}
        out[policy]["prefix_hit_rate"] = statistics.median(hits) if hits else None
    return out


def markdown(result: dict[str, Any]) -> str:
    w = result["workload"]
    lines = [
        f"# Suite 3: routing quality ({result['date']})",
        "",
        f"{w['prompts']} system prompts of {w['prompt_words']} words, {w['requests']} chat requests per phase, "
        f"concurrency {w['concurrency']}, {w['max_tokens']} output tokens; KV blocks per engine: "
        f"{result['kv_blocks'] or 'as many as 1 GiB holds (VLLM_CPU_KVCACHE_SPACE=1)'}.",
        "",
        "| round | policy | TTFT p50 ms | TTFT p99 ms | req/s | prefix-cache hit rate |",
        "|---|---|---|---|---|---|",
    ]
    for p in result["phases"]:
        hit = "" if p["prefix_hit_rate"] is None else f"{p['prefix_hit_rate']:.2f}"
        lines.append(
            f"| {p['round']} | {p['policy']} | {p['ttft_p50_ms']:.0f} | {p['ttft_p99_ms']:.0f} | "
            f"{p['req_per_s']:.2f} | {hit} |"
        )
    lines += [
        "",
        "| policy, median over rounds | TTFT p50 ms | TTFT p99 ms | req/s | prefix-cache hit rate |",
        "|---|---|---|---|---|",
    ]
    for policy, m in per_policy([Phase(**p) for p in result["phases"]]).items():
        hit = "" if m["prefix_hit_rate"] is None else f"{m['prefix_hit_rate']:.2f}"
        lines.append(f"| {policy} | {m['ttft_p50_ms']:.0f} | {m['ttft_p99_ms']:.0f} | {m['req_per_s']:.2f} | {hit} |")
    lines += ["", "| ratio, same round | median | min | max |", "|---|---|---|---|"]
    stems = {f"{a}_vs_{b}_".replace("-", "_"): f"{a} / {b}" for a, b in PAIRS}
    for name, r in result["summary"].items():
        stem = next((s for s in stems if name.startswith(s)), "")
        shown = f"{stems[stem]}, {name.removeprefix(stem)}" if stem else name
        lines.append(f"| {shown} | {r['median']:.2f}× | {r['min']:.2f}× | {r['max']:.2f}× |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> bool:
    """The PNG, when matplotlib (the `bench` extra) is installed; False when it is not."""
    plt = pyplot()
    if plt is None:
        return False
    metrics = [
        ("ttft_p50_ms", "TTFT p50 (ms)"),
        ("ttft_p99_ms", "TTFT p99 (ms)"),
        ("req_per_s", "requests/s"),
        ("prefix_hit_rate", "prefix-cache hit rate"),
    ]
    policies = list(dict.fromkeys(p["policy"] for p in result["phases"]))
    width = 0.8 / len(policies)
    fig, axes = plt.subplots(1, len(metrics), figsize=(16, 3.5))
    for ax, (metric, title) in zip(axes, metrics):
        for slot, policy in enumerate(policies):
            phases = [p for p in result["phases"] if p["policy"] == policy]
            offset = (slot - (len(policies) - 1) / 2) * width
            ax.bar([p["round"] + offset for p in phases], [p[metric] or 0 for p in phases], width=width, label=policy)
        ax.set_xticks(sorted({p["round"] for p in result["phases"]}))
        ax.set_xlabel("round")
        ax.set_title(title)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=8, help="distinct system prompts per phase")
    parser.add_argument("--prompt-words", type=int, default=900, help="words per system prompt (~1.3 tokens each)")
    parser.add_argument("--requests", type=int, default=64, help="requests per phase")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--kv-blocks", type=int, help="cap each engine's KV cache (vLLM num_gpu_blocks_override)")
    parser.add_argument("--policies", default=",".join(POLICIES), help="the routers' policies, comma-separated")
    parser.add_argument("--port-base", type=int, default=8260)
    parser.add_argument("--ready-timeout", type=float, default=900)
    parser.add_argument("--dry-run", action="store_true", help="print the workload and configs, start nothing")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tag", default="routing-quality", help="results file stem after the date")
    parser.add_argument(
        "--sim",
        action="store_true",
        help="two simulated instances (bench.fleet.server, blocks of 128 tokens as vLLM's CPU build uses, "
        "--kv-blocks each, shared by --sim-kv-groups) in place of the real engines: Suite 4's check against the "
        "real thing",
    )
    parser.add_argument(
        "--sim-kv-groups",
        type=int,
        default=GEMMA3_KV_GROUPS,
        help="with --sim: KV-cache groups sharing each simulated pool (Gemma 3 270M's: 6)",
    )
    args = parser.parse_args(argv)
    if args.sim and not args.kv_blocks:
        parser.error("--sim needs --kv-blocks")
    if args.prompts < 1 or args.requests < 1 or args.concurrency < 1 or args.rounds < 1:
        parser.error("--prompts, --requests, --concurrency and --rounds must be at least 1")
    args.policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
    if not args.policies or set(args.policies) - {"kv", "prefix", "least-loaded", "round-robin", "power-of-two"}:
        parser.error("--policies: some of kv, prefix, least-loaded, round-robin, power-of-two")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    workload = Workload(args.prompts, args.prompt_words, args.requests, args.concurrency, args.max_tokens)
    instances = [f"http://127.0.0.1:{args.port_base + 1}", f"http://127.0.0.1:{args.port_base + 2}"]
    routers = {policy: (args.port_base + 3 + i) for i, policy in enumerate(args.policies)}
    events_ports = [args.port_base + 20, args.port_base + 22]  # each with its replay port next to it
    if args.dry_run:
        sample = requests_for(workload, 0)
        print(
            json.dumps(
                {
                    "workload": asdict(workload),
                    "requests": len(sample),
                    "system_prompt_chars": len(sample[0][0]["content"]),
                    "engine_config": engine_config(args.port_base + 1, args.kv_blocks, events_ports[0]),
                    "router_configs": {
                        policy: router_config(port, policy, instances) for policy, port in routers.items()
                    },
                },
                indent=1,
            )
        )
        return
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(
        tempfile.mkdtemp(prefix="routing-quality-", dir=args.out / "logs" if (args.out / "logs").is_dir() else args.out)
    )
    cores = sorted(os.sched_getaffinity(0))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        tokenizer: str | None = None
        if args.sim:  # the simulated instances tokenize their own way: the kv router asks their /tokenize
            procs += [
                launch_sim(args.port_base + 1, events_ports[0], args.kv_blocks, args.sim_kv_groups, work / "sim.log")
            ] * 2
        for index in range(0 if args.sim else len(instances)):
            core = str(cores[index % len(cores)])
            env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": core, "HF_HUB_OFFLINE": "1"}
            config = engine_config(args.port_base + 1 + index, args.kv_blocks, events_ports[index])
            procs.append(launch(work / f"engine{index}.yaml", config, work / f"engine{index}.log", env))
        if not args.sim:
            from gateway.model_store import prepare_gemma

            tokenizer = str(prepare_gemma())  # the router tokenizes locally, as the engines do
        for policy, port in routers.items():
            procs.append(
                launch(
                    work / f"router-{policy}.yaml",
                    router_config(port, policy, instances, tokenizer),
                    work / f"router-{policy}.log",
                    {},
                )
            )
        for url, proc in zip(instances, procs):
            wait_answering(url, proc, "/health" if args.sim else "/ready", timeout_s=args.ready_timeout, interval_s=2)
        for port, proc in zip(routers.values(), procs[2:]):
            wait_answering(f"http://127.0.0.1:{port}", proc, "/ready", timeout_s=120, interval_s=2)
        # Warm both engines on prompts no phase uses (first-request costs, not prefix caching).
        asyncio.run(drive(instances[0], requests_for(Workload(1, 50, 2, 1, 2), 10**6), 1, 2))
        asyncio.run(drive(instances[1], requests_for(Workload(1, 50, 2, 1, 2), 10**6 + 7), 1, 2))
        phases = []
        for round_index in range(args.rounds):
            shift = round_index % len(args.policies)
            order = args.policies[shift:] + args.policies[:shift]  # each round, another policy goes first
            for slot, policy in enumerate(order):
                seed = 1000 * (round_index + 1) + slot
                phase = run_phase(policy, round_index, f"http://127.0.0.1:{routers[policy]}", instances, workload, seed)
                print(json.dumps(asdict(phase)), flush=True)
                phases.append(phase)
    finally:
        procs = list(dict.fromkeys(procs))  # the simulated pair is one process
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    result = {
        "suite": "routing-quality",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "load_avg_at_end": os.getloadavg()},
        "workload": asdict(workload),
        "kv_blocks": args.kv_blocks,
        "instances": f"simulated (bench.fleet.server, 128-token blocks, {args.sim_kv_groups} KV-cache groups)"
        if args.sim
        else "vLLM CPU engines",
        "phases": [asdict(p) for p in phases],
        "per_policy": per_policy(phases),
        "summary": summarise(phases),
    }
    stem = args.out / f"{dt.date.today().isoformat()}-{args.tag}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    plot(result, stem.with_suffix(".png"))
    print(stem.with_suffix(".json"))
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
