"""Suite 1: tokenyard engine mode vs `vllm serve`, same model, same engine args, same vLLM build.

Both servers run at once on different ports; rounds alternate A/B so drift hits both alike, and the
headline figures are ratios within each round (median and spread over rounds).

    python -m bench.engine_vs_vllm --rounds 3 --concurrency 1 8 32 --requests 16 --max-tokens 64
    python -m bench.engine_vs_vllm --shared-prefix-words 600   # every prompt starts with the same long text

The shared-prefix variant puts one long preamble before each request's own question, so that vLLM's
prefix cache (on in both servers) serves most of every prompt after the first.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from bench.loadgen import PROMPT, RunResult, run
from bench.plots import pyplot
from bench.procs import wait_answering

RESULTS = Path(__file__).resolve().parent / "results"
MODEL_NAME = "gemma-3-270m"


# The same engine arguments for both servers.
ENGINE_FLAGS = ["--served-model-name", MODEL_NAME, "--max-model-len", "2048", "--dtype", "bfloat16"]


def engine_env() -> dict[str, str]:
    """The same engine environment for both servers (tokenyard's CPU defaults, spelled out)."""
    cores = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    return {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "2",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "VLLM_CPU_OMP_THREADS_BIND": cores,
        "VLLM_HOST_IP": "127.0.0.1",
        "HF_HUB_OFFLINE": "1",
    }


def start_tokenyard(model_path: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--model", model_path, *ENGINE_FLAGS]
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=engine_env())


def start_vllm(model_path: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    # vllm-cpu's `vllm` console script is broken; the module entry point is the same server.
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model_path,
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--enforce-eager",
        *ENGINE_FLAGS,
    ]
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=engine_env())


def machine() -> dict[str, object]:
    import vllm

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {"cores": os.cpu_count(), "cpu": cpu, "vllm": vllm.__version__, "python": platform.python_version()}


def ratios(rounds: list[dict[str, RunResult]]) -> dict[str, dict[str, float]]:
    out = {}
    for metric in ("output_tokens_per_s", "ttft_p50_s", "itl_p50_s", "e2e_p50_s"):
        values = [getattr(r["tokenyard"], metric) / getattr(r["vllm"], metric) for r in rounds]
        out[metric] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


def plot(summary: dict[str, dict[str, dict[str, float]]], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return

    metrics = ["output_tokens_per_s", "ttft_p50_s", "itl_p50_s"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(12, 3.5))
    for ax, metric in zip(axes, metrics):
        levels = sorted(summary, key=int)
        med = [summary[c][metric]["median"] for c in levels]
        err = [
            [m - summary[c][metric]["min"] for c, m in zip(levels, med)],
            [summary[c][metric]["max"] - m for c, m in zip(levels, med)],
        ]
        ax.bar([f"c={c}" for c in levels], med, yerr=err, capsize=4, color="#4a7ab5")
        ax.axhline(1.0, color="grey", linestyle="--")
        ax.set_title(f"{metric}: tokenyard / vllm serve")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--suite", default="engine-vs-vllm")
    parser.add_argument(
        "--shared-prefix-words",
        type=int,
        default=0,
        help="put this many words of one shared preamble before every prompt",
    )
    parser.add_argument("--ports", type=int, nargs=2, default=[8301, 8302], help="tokenyard's and vllm's")
    args = parser.parse_args()
    prompt = PROMPT
    if args.shared_prefix_words:
        preamble = " ".join(f"rule{i % 97}" for i in range(args.shared_prefix_words))
        prompt = f"Follow these house rules: {preamble}.\n\n{PROMPT}"
        if args.suite == parser.get_default("suite"):
            args.suite += "-shared-prefix"

    from gateway.model_store import prepare_gemma

    model_path = str(prepare_gemma())
    RESULTS.mkdir(exist_ok=True)
    logs = RESULTS / "logs"
    logs.mkdir(exist_ok=True)
    launched = time.monotonic()
    ty_port, vllm_port = args.ports
    servers = {
        "tokenyard": (f"http://127.0.0.1:{ty_port}", start_tokenyard(model_path, ty_port, logs / "tokenyard.log")),
        "vllm": (f"http://127.0.0.1:{vllm_port}", start_vllm(model_path, vllm_port, logs / "vllm.log")),
    }
    try:
        startup = {
            name: wait_answering(url, proc, "/v1/models", started=launched) for name, (url, proc) in servers.items()
        }
        summary, raw = {}, {}
        for concurrency in args.concurrency:
            requests = max(args.requests, concurrency)
            rounds = []
            for i in range(args.rounds):
                order = list(servers) if i % 2 == 0 else list(reversed(servers))
                rounds.append(
                    {
                        name: asyncio.run(
                            run(servers[name][0], MODEL_NAME, concurrency, requests, args.max_tokens, prompt)
                        )
                        for name in order
                    }
                )
            summary[str(concurrency)] = ratios(rounds)
            raw[str(concurrency)] = [{k: asdict(v) for k, v in r.items()} for r in rounds]
    finally:
        for _, proc in servers.values():
            proc.terminate()
        for _, proc in servers.values():
            proc.wait(60)
    stamp = dt.date.today().isoformat()
    result = {
        "suite": args.suite,
        "date": stamp,
        "machine": machine(),
        "startup_s": startup,
        "args": vars(args),
        "ratios": summary,
        "rounds": raw,
    }
    (RESULTS / f"{stamp}-{args.suite}.json").write_text(json.dumps(result, indent=2))
    plot(summary, RESULTS / f"{stamp}-{args.suite}.png")
    print(json.dumps({"startup_s": startup, "ratios": summary}, indent=2))


if __name__ == "__main__":
    main()
