"""Suite 4: every policy over every workload, through the real router, on a simulated fleet.

    python -m bench.fleet --instances 16                 # one fleet size; results/DATE-fleet-16.{json,md}
    python -m bench.fleet --instances 4 --requests 200   # a smoke run

This process hosts the simulated instances (bench.fleet.server) and the clients; the router runs in its own
process (`python -m gateway serve`), one per phase (a workload under one policy), so its CPU time and memory
are that phase's. Between phases every instance's prefix cache is cleared, and each policy gets the same
workload (the same seed). Reported per phase, in simulated time: the instances' prefix-cache hit rate, TTFT
p50/p99 (from arrival at the instance to its first token), output tokens/s, load imbalance (the busiest
instance's time-averaged requests over the mean), requests lost; on the router process: CPU seconds per
request and resident memory.

Router CPU per request moves by a fifth from one phase to the next on a shared 2-core machine, whichever the
policy, more than the difference the target bounds. `--cpu-pairs N` runs N-1 more round-robin and kv phases
after each workload's, in pairs that alternate which runs first, and the CPU target is the median of the N
pairs' ratios (each listed beside it); the table shows the main phases.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil

from bench.fleet import report
from bench.fleet.engine import Clock
from bench.fleet.server import MODEL, Fleet, Instance
from bench.fleet.workloads import WORKLOADS, Session, Shape, build, oracle
from gateway.routing.kv_events import decode
from gateway.routing.kv_index import KvIndex
from gateway.settings import RouterSettings

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
POLICIES = ("round-robin", "least-loaded", "prefix", "kv")
PROFILE = ["-m", "cProfile", "-o", os.environ["FLEET_PROFILE"]] if os.environ.get("FLEET_PROFILE") else []
ROUTER_DEFAULTS = RouterSettings()  # the load bound's defaults, which --load-factor and --load-slack override
LOAD_FACTOR = [ROUTER_DEFAULTS.prefix_load_factor]  # router.prefix_load_factor of every phase's router
LOAD_SLACK = [ROUTER_DEFAULTS.prefix_load_slack]  # router.prefix_load_slack of every phase's router
WINDOW_S = 5.0  # simulated seconds a point of the churn run's hit-rate series


@dataclass
class Phase:
    workload: str
    policy: str
    instances: int
    requests: int
    lost: int
    hit_rate: float
    ttft_p50_s: float
    ttft_p99_s: float
    client_ttft_p50_s: float  # wall clock at the client, times the scale: includes the router
    output_tokens_per_s: float
    imbalance: float | None
    router_cpu_ms_per_request: float
    router_rss_mib: float
    kv_blocks: int | None
    engine_lag_s: float
    sim_cpu_s: float  # this process's CPU over the phase: the instances and the clients
    span_s: float
    oracle_hit_rate: float
    ceiling_hit_rate: float
    pooled_hit_rate: float | None = None  # the oracle before the repeated prefills the load bound forces
    kv_decisions: dict[str, int] | None = None
    errors: dict[str, int] | None = None  # what the lost requests were answered
    hit_series: list[tuple[float, float]] | None = None  # churn: (window start, hit rate), simulated
    events: list[tuple[float, str]] | None = None  # churn: (simulated time, what changed)
    kv_index_bytes_per_1000_blocks: float | None = None
    kv_resyncs: int | None = None  # the router's re-syncs from the replay socket (gaps, restarts)
    repeat: int = 0  # 0: the workload's main phase; 1, 2, ...: an extra round-robin/kv pair's (--cpu-pairs)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# -- the router ---------------------------------------------------------------------------


def router_config(port: int, policy: str, urls: list[str], load_factor: float, load_slack: int) -> str:
    upstreams = "".join(f"      - {url}\n" for url in urls)
    return (
        f"host: 127.0.0.1\nport: {port}\nlog_level: warning\n"
        "limits:\n  max_in_flight: 100000\n  max_queue: 100000\n  queue_timeout_s: 600\n"
        f"router:\n  first_token_timeout_s: 600\n  idle_timeout_s: 600\n  prefix_load_factor: {load_factor}\n"
        f"  prefix_load_slack: {load_slack}\n"
        "  kv_discovery_interval_s: 0.5\n  reload_interval_s: 0.2\n"
        f"routes:\n  - name: {MODEL}\n    policy: {policy}\n    upstreams:\n{upstreams}"
    )


class Router:
    def __init__(self, port: int, policy: str, workdir: Path) -> None:
        self.port, self.policy = port, policy
        self.url = f"http://127.0.0.1:{port}"
        self.config = workdir / f"router-{policy}.yaml"
        self.log = workdir / f"router-{policy}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, urls: list[str]) -> None:
        self.config.write_text(router_config(self.port, self.policy, urls, LOAD_FACTOR[0], LOAD_SLACK[0]))
        self._spawn()
        await self.wait(lambda state: state.get("ready_instances") == len(urls))

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *PROFILE, "-m", "gateway", "serve", "--config", str(self.config)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    async def set_upstreams(self, urls: list[str]) -> None:
        self.config.write_text(router_config(self.port, self.policy, urls, LOAD_FACTOR[0], LOAD_SLACK[0]))
        await self.wait(lambda state: state.get("instances") == len(urls) and state.get("ready_instances") == len(urls))

    async def wait(self, ok: Any, timeout_s: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=5) as client:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the router exited: {self.log.read_text()[-2000:]}")
                try:
                    state = (await client.get(f"{self.url}/ready")).json()["models"][MODEL]
                    if ok(state):
                        return dict(state)
                except (httpx.HTTPError, ValueError, KeyError, TypeError):
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError(f"router {self.policy}: {self.log.read_text()[-2000:]}")

    def cpu_s(self) -> float:
        assert self.proc is not None
        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system

    def rss_mib(self) -> float:
        assert self.proc is not None
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    async def kv_state(self) -> dict[str, Any] | None:
        async with httpx.AsyncClient(timeout=10) as client:
            state = (await client.get(f"{self.url}/ready")).json()["models"][MODEL].get("kv_routing")
        return state if isinstance(state, dict) else None

    async def metric(self, name: str) -> float:
        async with httpx.AsyncClient(timeout=10) as client:
            text = (await client.get(f"{self.url}/metrics")).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith((name + "{", name + "_total{"))
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- the clients --------------------------------------------------------------------------


@dataclass
class Outcome:
    ok: bool
    ttft_real_s: float
    error: str | None = None


async def ask(http: aiohttp.ClientSession, url: str, messages: list[dict[str, Any]], max_tokens: int) -> Outcome:
    body = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.monotonic()
    first: float | None = None
    done = False
    try:
        async with http.post(f"{url}/v1/chat/completions", json=body) as response:
            if response.status != 200:
                return Outcome(False, 0.0, f"{response.status} {(await response.read())[:200]!r}")
            async for line in response.content:
                if first is None and line.startswith(b"data: {"):
                    first = time.monotonic()
                if line.startswith(b"data: [DONE]"):
                    done = True
    except (TimeoutError, aiohttp.ClientError) as exc:
        return Outcome(False, 0.0, repr(exc))
    return Outcome(done and first is not None, (first or started) - started, None if done else "no [DONE]")


async def drive(url: str, workload: list[Session], clock: Clock) -> list[Outcome]:
    """Every session on its own task: it starts at its time and sends its turns one after the other."""
    outcomes: list[Outcome] = []
    start = clock.now()
    # Kept-alive connections are dropped well before the router's own keep-alive timeout (uvicorn's 5 s), so
    # that no request goes out on a connection the router is closing (an error of the client's making).
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=1.0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=1200)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def run(session: Session) -> None:
            await asyncio.sleep(max(0.0, clock.real_s(start + session.start_s - clock.now())))
            for index, turn in enumerate(session.turns):
                if turn.think_s:
                    await asyncio.sleep(clock.real_s(turn.think_s))
                outcome = await ask(http, url, session.messages(index), turn.max_tokens)
                outcomes.append(outcome)
                if not outcome.ok:
                    return  # the session's history is lost with its answer

        await asyncio.gather(*(run(s) for s in workload))
    return outcomes


# -- one phase ----------------------------------------------------------------------------


async def churn(fleet: Fleet, router: Router, span_s: float, base: int, events: list[tuple[float, str]]) -> None:
    """A scale-up at a third of the run (a quarter more instances), a rollout at two thirds (a quarter of the
    first instances removed: out of the router's config first, then drained)."""
    clock = fleet.clock
    t0 = clock.now()
    first = list(fleet.instances.values())
    extra = max(1, len(first) // 4)
    await asyncio.sleep(clock.real_s(span_s / 3))
    added = [await fleet.add(base + i, base + 1000 + 2 * i) for i in range(extra)]
    await router.set_upstreams([i.url for i in first + added])
    events.append((clock.now() - t0, f"+{extra} instances"))
    await asyncio.sleep(clock.real_s(span_s / 3))
    leaving = first[:extra]
    await router.set_upstreams([i.url for i in first[extra:] + added])
    events.append((clock.now() - t0, f"-{extra} instances"))
    await asyncio.gather(*(fleet.remove(i.port) for i in leaving))


def _ready_kv(state: dict[str, Any], count: int) -> bool:
    kv = state.get("kv_routing") or {}
    return len(kv.get("events_instances") or []) == count


async def run_phase(
    fleet: Fleet, workload_name: str, policy: str, shape: Shape, seed: int, workdir: Path, port: int
) -> Phase:
    workload = build(workload_name, shape, seed)
    await fleet.reset(restart=True)
    instances = list(fleet.instances.values())
    router = Router(port, policy, workdir)
    try:
        await router.start([i.url for i in instances])
        if policy == "kv":  # a batch from each instance makes the router sync it (replay from batch 0)
            await fleet.reset()
            await router.wait(lambda state: _ready_kv(state, len(instances)))
        counts = {id(i): len(i.records) for i in fleet.all()}  # an instance added during the phase starts at 0
        for instance in instances:
            instance.engine.lag_s = 0.0
        clock = fleet.clock
        cpu0, t0, sim_cpu0 = router.cpu_s(), clock.now(), _own_cpu_s()
        kv0 = await router.kv_state() if policy == "kv" else None
        events: list[tuple[float, str]] = []
        span = max(s.start_s for s in workload)
        side = (
            asyncio.ensure_future(churn(fleet, router, span, port + 100, events)) if workload_name == "churn" else None
        )
        outcomes = await drive(router.url, workload, clock)
        if side is not None:
            await side
        t1 = clock.now()
        cpu = router.cpu_s() - cpu0
        kv1 = await router.kv_state() if policy == "kv" else None
        resyncs = await router.metric("tokenyard_route_kv_resyncs") if policy == "kv" else None
        rss = router.rss_mib()
    finally:
        router.stop()
    records = [r for i in fleet.all() for r in i.records[counts.get(id(i), 0) :]]
    records.sort(key=lambda r: r.arrival)
    ttfts = [r.first_token - r.arrival for r in records]
    prompt = sum(r.prompt_tokens for r in records) or 1
    # Each instance's requests in the system (waiting or running) over the phase, by Little's law: the sum of
    # its requests' times from arrival to finish, all in simulated time.
    busy = [sum(r.finish - r.arrival for r in i.records[counts[id(i)] :]) for i in instances]
    limits = oracle(workload, fleet.blocks * len(instances), fleet.block_size, len(instances), LOAD_FACTOR[0])
    decisions = None
    if kv1 is not None:
        before = (kv0 or {}).get("decisions") or {}
        decisions = {k: v - before.get(k, 0) for k, v in (kv1.get("decisions") or {}).items()}
    return Phase(
        workload_name,
        policy,
        len(instances),
        len(outcomes),
        sum(not o.ok for o in outcomes) + sum(len(s.turns) for s in workload) - len(outcomes),
        sum(r.cached_tokens for r in records) / prompt,
        _pct(ttfts, 0.5),
        _pct(ttfts, 0.99),
        _pct([o.ttft_real_s * clock.scale for o in outcomes if o.ok], 0.5),
        sum(r.output_tokens for r in records) / max(1e-9, max(r.finish for r in records) - records[0].arrival)
        if records
        else 0.0,
        None if workload_name == "churn" or not busy else max(busy) / (sum(busy) / len(busy)),
        cpu * 1000 / max(1, len(outcomes)),
        rss,
        int(kv1["blocks_indexed"]) if kv1 else None,
        max(i.engine.lag_s for i in fleet.all()),
        _own_cpu_s() - sim_cpu0,
        t1 - t0,
        limits["oracle_hit_rate"],
        limits["ceiling_hit_rate"],
        pooled_hit_rate=limits["pooled_hit_rate"],
        kv_decisions=decisions,
        kv_resyncs=int(resyncs) if resyncs is not None else None,
        errors=dict(Counter(o.error for o in outcomes if o.error)) or None,
        hit_series=_series(records, t0) if workload_name == "churn" else None,
        events=events or None,
        kv_index_bytes_per_1000_blocks=index_bytes_per_1000_blocks(fleet.all()) if policy == "kv" else None,
    )


def index_bytes_per_1000_blocks(instances: list[Instance]) -> float | None:
    """The router's KV index (gateway.routing.kv_index), rebuilt here from every batch the instances still
    buffer for replay, as the router builds it, and weighed object by object: bytes per 1,000 blocks."""
    index = KvIndex(max_blocks=10**9)
    for instance in instances:
        batches = instance.publisher.buffered()
        if batches:
            index.drop(instance.url, next_seq=batches[0][0])  # the buffer may no longer reach back to 0
        for seq, payload in batches:
            ts, events = decode(payload)
            index.apply(instance.url, seq, ts, events)
    if not index.size:
        return None
    return deep_size(index) / (index.size / 1000)


def deep_size(root: Any) -> int:
    seen: set[int] = set()
    total, stack = 0, [root]
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, type):
            continue
        seen.add(id(item))
        total += sys.getsizeof(item)
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif hasattr(item, "__dict__"):
            stack.append(vars(item))
    return total


def _own_cpu_s() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


def _series(records: list[Any], t0: float) -> list[tuple[float, float]]:
    windows: dict[int, list[int]] = {}
    for r in records:
        cell = windows.setdefault(int((r.arrival - t0) // WINDOW_S), [0, 0])
        cell[0] += r.cached_tokens
        cell[1] += r.prompt_tokens
    return [(k * WINDOW_S, hit / max(1, total)) for k, (hit, total) in sorted(windows.items())]


# -- the run ------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    shape = Shape(args.instances, args.requests, rate_per_instance=args.rate)
    scale = args.scale or args.real_rps / (args.rate * args.instances)
    fleet = Fleet(Clock(scale), args.blocks)
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="fleet-") as tmp:
        try:
            for index in range(args.instances):
                await fleet.add(args.port + index, args.port + 2000 + 2 * index)
            for workload in args.workloads:
                for repeat, policy in plan(args.policies, args.cpu_pairs):
                    phase = await run_phase(fleet, workload, policy, shape, args.seed, Path(tmp), args.port + 500)
                    phase.repeat = repeat
                    phases.append(phase)
                    print(json.dumps({k: v for k, v in asdict(phase).items() if k != "hit_series"}), flush=True)
                    # Instances added or removed by churn: start the next phase from the fleet it began with.
                    for port in [p for p in fleet.instances if not args.port <= p < args.port + args.instances]:
                        await fleet.remove(port)
                    for index in range(args.instances):
                        if args.port + index not in fleet.instances:
                            await fleet.add(args.port + index, args.port + 2000 + 2 * index)
        finally:
            await fleet.close()
    return {
        "suite": "fleet",
        "date": dt.date.today().isoformat(),
        "instances": args.instances,
        "blocks_per_instance": args.blocks,
        "block_size": 16,
        "scale": scale,
        "seed": args.seed,
        "shape": asdict(shape),
        "timing": asdict(fleet.timing),
        "phases": [asdict(p) for p in phases],
        "targets": report.targets([asdict(p) for p in phases]),
    }


def plan(policies: tuple[str, ...], cpu_pairs: int) -> list[tuple[int, str]]:
    """A workload's phases, (repeat, policy) in order: every policy once, then cpu_pairs - 1 more round-robin
    and kv pairs, kv first in every other one (where both policies are run)."""
    out = [(0, policy) for policy in policies]
    if "kv" in policies and "round-robin" in policies:
        for repeat in range(1, cpu_pairs):
            out += [(repeat, p) for p in (("kv", "round-robin") if repeat % 2 else ("round-robin", "kv"))]
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2000, help="Requests per phase.")
    parser.add_argument("--rate", type=float, default=3.0, help="Simulated requests/s per instance.")
    parser.add_argument("--blocks", type=int, default=2048, help="KV-cache blocks per instance (C).")
    parser.add_argument("--real-rps", type=float, default=100.0, help="Wall-clock requests/s the scale aims at.")
    parser.add_argument("--scale", type=float, default=None, help="Simulated seconds a wall-clock second (overrides).")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--load-factor", type=float, default=ROUTER_DEFAULTS.prefix_load_factor, help="The routers' prefix_load_factor."
    )
    parser.add_argument(
        "--load-slack", type=int, default=ROUTER_DEFAULTS.prefix_load_slack, help="The routers' prefix_load_slack."
    )
    parser.add_argument(
        "--cpu-pairs", type=int, default=1, help="Round-robin/kv pairs a workload whose router CPU ratio is taken."
    )
    parser.add_argument("--port", type=int, default=21000)
    parser.add_argument("--workloads", type=lambda v: tuple(v.split(",")), default=WORKLOADS)
    parser.add_argument("--policies", type=lambda v: tuple(v.split(",")), default=POLICIES)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default=None, help="Results file stem; default DATE-fleet-N.")
    parser.add_argument(
        "--update", action="store_true", help="Replace only these workloads' phases in an existing results file."
    )
    args = parser.parse_args(argv)
    for name in args.workloads:
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name}")
    for name in args.policies:
        if name not in POLICIES:
            parser.error(f"unknown policy {name}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    LOAD_FACTOR[0], LOAD_SLACK[0] = args.load_factor, args.load_slack
    result = asyncio.run(run(args))
    result["prefix_load_factor"], result["prefix_load_slack"] = args.load_factor, args.load_slack
    stem = args.name or f"{result['date']}-fleet-{args.instances}"
    args.out.mkdir(parents=True, exist_ok=True)
    if args.update and (args.out / f"{stem}.json").exists():  # these workloads' phases replace the file's
        earlier = json.loads((args.out / f"{stem}.json").read_text())
        kept = [p for p in earlier["phases"] if p["workload"] not in args.workloads]
        result["phases"] = kept + result["phases"]
        result["updated_workloads"] = sorted(set(earlier.get("updated_workloads", [])) | set(args.workloads))
        result["targets"] = report.targets(result["phases"])
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(report.markdown(result))
    print(report.markdown(result))
    if args.name:
        report.plot([result], args.out / f"{stem}.png")
    else:  # one figure for every fleet size run that day
        sizes = [json.loads(p.read_text()) for p in args.out.glob(f"{result['date']}-fleet-*.json")]
        report.plot(sorted(sizes, key=lambda r: r["instances"]), args.out / f"{result['date']}-fleet.png")
