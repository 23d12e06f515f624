"""Suite 4's targets (ratios within one run), its markdown table and its plot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from bench.fleet.workloads import WORKLOADS
from bench.plots import pyplot

WINDOW_S = 5.0


def _phase(phases: list[dict[str, Any]], workload: str, policy: str, repeat: int = 0) -> dict[str, Any] | None:
    """A workload's phase under a policy: the main one, or an extra pair's (`repeat` 1, 2, ...)."""
    return next(
        (p for p in phases if p["workload"] == workload and p["policy"] == policy and p.get("repeat", 0) == repeat),
        None,
    )


def cpu_ratios(phases: list[dict[str, Any]], workload: str) -> list[float]:
    """Router CPU per request, kv over round-robin, of each pair run on `workload`: the main phases first,
    then the extra pairs (suite --cpu-pairs), which alternate which of the two runs first."""
    ratios = []
    for repeat in range(1 + max((p.get("repeat", 0) for p in phases), default=0)):
        own, rr = _phase(phases, workload, "kv", repeat), _phase(phases, workload, "round-robin", repeat)
        if own and rr:
            ratios.append(own["router_cpu_ms_per_request"] / max(1e-9, rr["router_cpu_ms_per_request"]))
    return ratios


def recovery_s(phase: dict[str, Any], reference_hit_rate: float) -> float | None:
    """Simulated seconds after each churn event until a window's hit rate is back to 0.9x the hit rate the
    same policy gets on the same workload without churn (`reference_hit_rate`); the longest over the events.
    A window that holds the event and already reaches it counts from the event to the window's end."""
    series, events = phase.get("hit_series") or [], phase.get("events") or []
    if not series or not events:
        return None
    level = 0.9 * reference_hit_rate
    worst = 0.0
    for at, _ in events:
        back = next((start + WINDOW_S for start, hit in series if start + WINDOW_S > at and hit >= level), None)
        if back is None:
            return float("inf")
        worst = max(worst, back - at)
    return worst


def targets(phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target of issue 32 that this run can judge: its value, its bound, met or not."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, bound: float, upper: bool = True) -> None:
        if value is not None:
            out.append(
                {"target": name, "value": value, "bound": bound, "met": value <= bound if upper else value >= bound}
            )

    for workload in ("shared", "sessions"):
        if kv := _phase(phases, workload, "kv"):
            add(
                f"{workload}: kv hit rate / oracle", kv["hit_rate"] / max(1e-9, kv["oracle_hit_rate"]), 0.9, upper=False
            )
    kv = _phase(phases, "sessions", "kv")
    for peer, bound in (("prefix", 0.8), ("round-robin", 0.5)):
        other = _phase(phases, "sessions", peer)
        if kv and other:
            add(f"sessions: kv TTFT p50 / {peer}", kv["ttft_p50_s"] / max(1e-9, other["ttft_p50_s"]), bound)
    if hot := _phase(phases, "hot", "kv"):
        add("hot: kv load imbalance (max/mean)", hot["imbalance"], 1.25)
    if churn := _phase(phases, "churn", "kv"):
        add("churn: kv requests lost", churn["lost"], 0)
        if steady := _phase(phases, "sessions", "kv"):
            add("churn: kv hit rate back to 0.9x of sessions' within (s)", recovery_s(churn, steady["hit_rate"]), 30.0)
    for workload in WORKLOADS:  # the target names no workload: each is held to it
        if ratios := cpu_ratios(phases, workload):
            pairs = (
                f" (median of {len(ratios)} pairs: {', '.join(f'{r:.2f}' for r in ratios)})" if len(ratios) > 1 else ""
            )
            add(f"{workload}: router CPU per request, kv / round-robin{pairs}", statistics.median(ratios), 1.3)
    for phase in phases:
        if phase["policy"] == "kv" and not phase.get("repeat") and phase.get("kv_index_bytes_per_1000_blocks"):
            out.append(
                {
                    "target": f"{phase['workload']}: KV index KiB per 1,000 cached blocks (reported)",
                    "value": phase["kv_index_bytes_per_1000_blocks"] / 1024,
                    "bound": None,
                    "met": None,
                }
            )
    return out


def markdown(result: dict[str, Any]) -> str:
    shape, timing = result["shape"], result["timing"]
    lines = [
        f"# Suite 4: routing at fleet scale, simulated ({result['date']}, {result['instances']} instances)",
        "",
        f"Each instance: {result['blocks_per_instance']} KV blocks of {result['block_size']} tokens, "
        f"max_num_seqs {timing['max_num_seqs']}, step {timing['step_base_s'] * 1000:g} ms + "
        f"{timing['decode_per_seq_s'] * 1000:g} ms a decoding sequence + {timing['prefill_per_token_s'] * 1e6:g} us a "
        f"prefill token (Llama-3.1-8B on one H100, bench/fleet/engine.py). {shape['requests']} requests a phase at "
        f"{shape['rate_per_instance']:g} requests/s an instance; simulated time ran {result['scale']:.2f}x "
        "the wall clock. "
        "Times are simulated seconds; router CPU and memory are the real router process's.",
        "",
        "| workload | policy | hit rate | oracle | TTFT p50 s | TTFT p99 s | out tok/s | imbalance | lost "
        "| router CPU ms/req | router RSS MiB | kv blocks | engine lag s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in result["phases"]:
        if p.get("repeat"):
            continue  # an extra pair, for router CPU only: in the target's line
        imbalance = "" if p["imbalance"] is None else f"{p['imbalance']:.2f}"
        lines.append(
            f"| {p['workload']} | {p['policy']} | {p['hit_rate']:.3f} | {p['oracle_hit_rate']:.3f} | "
            f"{p['ttft_p50_s']:.3f} | {p['ttft_p99_s']:.3f} | {p['output_tokens_per_s']:.0f} | {imbalance} | "
            f"{p['lost']} | {p['router_cpu_ms_per_request']:.2f} | {p['router_rss_mib']:.0f} | "
            f"{p['kv_blocks'] if p['kv_blocks'] is not None else ''} | {p['engine_lag_s']:.2f} |"
        )
    lines += ["", "| target | value | bound | met |", "|---|---|---|---|"]
    for t in result["targets"]:
        bound = "" if t["bound"] is None else f"{t['bound']:g}"
        met = "" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {t['value']:.3f} | {bound} | {met} |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], path: Path) -> bool:
    """Hit rate and TTFT p50 by policy, workload and fleet size; False without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    workloads = ["shared", "sessions", "hot", "churn"]
    results = [{**r, "phases": [p for p in r["phases"] if not p.get("repeat")]} for r in results]
    fig, axes = plt.subplots(2, len(results), figsize=(6 * len(results), 8), squeeze=False)
    for column, result in enumerate(results):
        policies = list(dict.fromkeys(p["policy"] for p in result["phases"]))
        width = 0.8 / max(1, len(policies))
        for row, metric in enumerate(("hit_rate", "ttft_p50_s")):
            ax = axes[row][column]
            for k, policy in enumerate(policies):
                values = [
                    next((p[metric] for p in result["phases"] if p["workload"] == w and p["policy"] == policy), 0)
                    for w in workloads
                ]
                ax.bar([x + k * width for x in range(len(workloads))], values, width, label=policy)
            if metric == "hit_rate":
                oracle = [
                    next((p["oracle_hit_rate"] for p in result["phases"] if p["workload"] == w), 0) for w in workloads
                ]
                ax.scatter(
                    [x + 0.4 - width / 2 for x in range(len(workloads))],
                    oracle,
                    marker="_",
                    s=600,
                    color="black",
                    label="oracle",
                )
            ax.set_xticks([x + 0.4 - width / 2 for x in range(len(workloads))], workloads)
            ax.set_title(
                f"{result['instances']} instances: {'prefix-cache hit rate' if row == 0 else 'TTFT p50 (simulated s)'}"
            )
            ax.legend(fontsize=7, loc="lower left" if row == 0 else "upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> None:
    """Recompute the targets, the markdown and the figure of results files (python -m bench.fleet.report F...)."""
    import json
    import sys

    paths = [Path(p) for p in (argv if argv is not None else sys.argv[1:])]
    results = []
    for path in paths:
        result = json.loads(path.read_text())
        result["targets"] = targets(result["phases"])
        path.write_text(json.dumps(result, indent=2) + "\n")
        path.with_suffix(".md").write_text(markdown(result))
        results.append(result)
    if results:
        plot(sorted(results, key=lambda r: r["instances"]), paths[0].parent / f"{results[0]['date']}-fleet.png")


if __name__ == "__main__":
    main()
