"""Suite 2's figures: within-round ratios, their median and spread, and the JSON, PNG and Markdown outputs."""

from __future__ import annotations

import datetime as dt
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.plots import pyplot

Run = dict[str, Any]
FRONT_ORDER = ["tokenyard", "vllm-router", "sglang-router", "naive", "litellm", "bare-asgi", "bare-callback", "direct"]
COLORS = dict(
    zip(
        FRONT_ORDER,
        ["tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:red", "tab:olive", "tab:cyan", "tab:gray"],
    )
)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _diff(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def derive(cell: dict[str, Run]) -> dict[str, dict[str, float | None]]:
    """The same-round comparisons of one (mode, concurrency, round) cell, front by front."""
    direct, litellm, vllm = cell.get("direct"), cell.get("litellm"), cell.get("vllm-router")
    out = {}
    for name, run in cell.items():
        out[name] = {
            "cpu_ms_per_req": run["cpu_ms_per_req"],
            "cpu_us_per_chunk": run["cpu_us_per_chunk"],
            "req_per_s": run["req_per_s"],
            "ttft_p50_ms": run["ttft_p50_ms"],
            "ttft_p99_ms": run["ttft_p99_ms"],
            "rss_idle_mb": run["rss_idle_mb"],
            "rss_peak_mb": run["rss_peak_mb"],
            "added_ttft_p50_ms": _diff(run["ttft_p50_ms"], direct["ttft_p50_ms"]) if direct else None,
            "added_ttft_p99_ms": _diff(run["ttft_p99_ms"], direct["ttft_p99_ms"]) if direct else None,
            "req_per_s_vs_direct": _ratio(run["req_per_s"], direct["req_per_s"]) if direct else None,
            "req_per_s_vs_litellm": _ratio(run["req_per_s"], litellm["req_per_s"]) if litellm else None,
            # requests one core relays, against LiteLLM's: the inverse ratio of CPU per request
            "per_core_vs_litellm": _ratio(litellm["cpu_ms_per_req"], run["cpu_ms_per_req"]) if litellm else None,
            "cpu_vs_vllm_router": _ratio(run["cpu_ms_per_req"], vllm["cpu_ms_per_req"]) if vllm else None,
        }
    return out


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per (mode, concurrency, front): each figure's median and range over the rounds.

    Rounds in which something else was busy during the front's run are left out, unless every round was.
    """
    cells: dict[tuple[str, int, int], dict[str, Run]] = defaultdict(dict)
    for run in runs:
        cells[(run["mode"], run["concurrency"], run["round"])][run["front"]] = run
    per_front: dict[tuple[str, int, str], list[tuple[bool, dict[str, float | None], Run]]] = defaultdict(list)
    for (mode, concurrency, _), cell in cells.items():
        for name, figures in derive(cell).items():
            per_front[(mode, concurrency, name)].append((cell[name]["busy"], figures, cell[name]))
    rows = []
    for (mode, concurrency, name), entries in sorted(
        per_front.items(),
        key=lambda item: (item[0][0], item[0][1], FRONT_ORDER.index(item[0][2]) if item[0][2] in FRONT_ORDER else 99),
    ):
        quiet = [entry for entry in entries if not entry[0]]
        used = quiet or entries
        row: dict[str, Any] = {
            "mode": mode,
            "concurrency": concurrency,
            "front": name,
            "rounds": len(entries),
            "busy_rounds": len(entries) - len(quiet),
            "used_busy_rounds": not quiet,
            "errors": sum(run["errors"] for _, _, run in entries),
            "short_streams": sum(run["short"] for _, _, run in entries),
        }
        for key in used[0][1]:
            row[key] = _spread([value for _, figures, _ in used if (value := figures[key]) is not None])
        rows.append(row)
    return rows


def _fmt(cell: dict[str, float] | None, digits: int = 2, suffix: str = "", signed: bool = False) -> str:
    if not cell:
        return "–"
    sign = "+" if signed else ""
    text = f"{cell['median']:{sign}.{digits}f}{suffix}"
    if cell["n"] > 1:
        text += f" ({cell['min']:.{digits}f}–{cell['max']:.{digits}f})"
    return text


def _find(rows: list[dict[str, Any]], mode: str, concurrency: int, front: str) -> dict[str, Any] | None:
    return next(
        (r for r in rows if r["mode"] == mode and r["concurrency"] == concurrency and r["front"] == front), None
    )


def headline(result: dict[str, Any]) -> str:
    rows = result["summary"]
    concurrencies = sorted({r["concurrency"] for r in rows if r["mode"] != "open-streams"})
    c = 64 if 64 in concurrencies else max(concurrencies)
    fronts = [f for f in FRONT_ORDER if any(r["front"] == f for r in rows) and f != "direct"]
    streams = next((r["concurrency"] for r in rows if r["mode"] == "open-streams"), None)
    probe = f" ({streams} open streams)" if streams else ""
    lines = [
        f"| front | CPU ms / streamed request | CPU µs / relayed chunk | added TTFT p50 / p99 ({c} paced streams) "
        f"| req/s vs direct (c={c}, paced / burst) | streamed req/s per core vs LiteLLM | RSS idle / peak MB{probe} |",
        "|---|---|---|---|---|---|---|",
    ]
    for front in fronts:
        paced, burst = _find(rows, "stream-paced", c, front), _find(rows, "stream-burst", c, front)
        if not paced and not burst:
            continue
        p: dict[str, Any] = paced or {}
        b: dict[str, Any] = burst or {}
        rss_idle = p.get("rss_idle_mb") or b.get("rss_idle_mb")
        opened = next((r for r in rows if r["mode"] == "open-streams" and r["front"] == front), None) or {}
        rss_peak = max((x["rss_peak_mb"]["max"] for x in (p, b, opened) if x.get("rss_peak_mb")), default=None)
        lines.append(
            " | ".join(
                [
                    f"| {front}",
                    _fmt(p.get("cpu_ms_per_req")),
                    _fmt(b.get("cpu_us_per_chunk"), 1),
                    f"{_fmt(p.get('added_ttft_p50_ms'), 1, signed=True)} / "
                    f"{_fmt(p.get('added_ttft_p99_ms'), 1, signed=True)} ms",
                    f"{_fmt(p.get('req_per_s_vs_direct'), 2, '×')} / {_fmt(b.get('req_per_s_vs_direct'), 2, '×')}",
                    _fmt(p.get("per_core_vs_litellm"), 1, "×"),
                    f"{rss_idle['median']:.0f} / {rss_peak:.0f}" if rss_idle and rss_peak else "–",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    out = [
        f"# Suite 2: router overhead ({result['date']})",
        "",
        f"Machine: {m['cores']} cores, {m['cpu']}, Python {m['python']}; front pinned to core "
        f"{result['pinning']['front_core']}, stub + load generator to core "
        f"{result['pinning']['stub_and_loadgen_core']}. "
        f"{result['settings']['rounds']} alternating rounds of {result['settings']['duration']} s per run; "
        "medians with the range over rounds; ratios are within a round.",
        "",
        "Versions: " + ", ".join(f"{name} {info['version']}" for name, info in result["fronts"].items()),
        "",
    ]
    if result["failed_fronts"]:
        failed = result["failed_fronts"].items()
        out += ["Not measured: " + "; ".join(f"{k}: {v.splitlines()[0][:200]}" for k, v in failed), ""]
    if result.get("idle_cpu_pct"):
        idle = ", ".join(f"{k} {v:.1f}%" for k, v in result["idle_cpu_pct"].items())
        out += [f"Idle CPU (no traffic, % of a core): {idle}", ""]
    busy = sum(run["busy"] for run in result["runs"])
    out += [
        f"Busy runs (other processes > {result['busy_threshold_cores']} cores): {busy} of {len(result['runs'])}.",
        "",
        headline(result),
        "",
        "## Every cell",
        "",
        "| mode | c | front | req/s | vs direct | TTFT p50 ms | added p50 / p99 ms | CPU ms/req | CPU µs/chunk "
        "| RSS peak MB | errors | busy rounds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["summary"]:
        out.append(
            " | ".join(
                [
                    f"| {r['mode']}",
                    str(r["concurrency"]),
                    r["front"],
                    _fmt(r["req_per_s"], 0),
                    _fmt(r["req_per_s_vs_direct"]),
                    _fmt(r["ttft_p50_ms"], 1),
                    f"{_fmt(r['added_ttft_p50_ms'], 1, signed=True)} / {_fmt(r['added_ttft_p99_ms'], 1, signed=True)}",
                    _fmt(r["cpu_ms_per_req"]),
                    _fmt(r["cpu_us_per_chunk"], 1),
                    _fmt(r["rss_peak_mb"], 0),
                    str(r["errors"] + r["short_streams"]),
                    f"{r['busy_rounds']}/{r['rounds']}",
                ]
            )
            + " |"
        )
    return "\n".join(out) + "\n"


def plot(result: dict[str, Any], path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    from matplotlib.ticker import ScalarFormatter

    rows = result["summary"]
    panels = [
        ("stream-paced", "cpu_ms_per_req", "CPU ms per streamed request (32 paced chunks)", "log"),
        ("stream-burst", "cpu_us_per_chunk", "CPU µs per relayed chunk (128 back to back)", "log"),
        ("stream-paced", "added_ttft_p50_ms", "added TTFT p50, ms (paced)", "symlog"),
        ("stream-paced", "req_per_s_vs_direct", "requests/s vs direct (paced)", "linear"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, (mode, key, title, scale) in zip(axes.flat, panels):
        for front in FRONT_ORDER:
            points = [
                (r["concurrency"], r[key]) for r in rows if r["mode"] == mode and r["front"] == front and r.get(key)
            ]
            if not points:
                continue
            xs = [x for x, _ in points]
            ax.errorbar(
                xs,
                [v["median"] for _, v in points],
                marker="o",
                label=front,
                capsize=3,
                color=COLORS[front],
                yerr=[[v["median"] - v["min"] for _, v in points], [v["max"] - v["median"] for _, v in points]],
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["concurrency"] for r in rows if r["mode"] == mode}))
        ax.get_xaxis().set_major_formatter(ScalarFormatter())
        ax.set_yscale(scale)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("concurrency")
        ax.grid(True, alpha=0.3)
    handles = {label: handle for ax in axes.flat for handle, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles), fontsize=9)
    fig.suptitle(
        f"Suite 2: router overhead, {result['machine']['cores']} cores, same-run rounds ({result['date'][:10]})"
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_outputs(result: dict[str, Any], out: Path, tag: str) -> list[Path]:
    stem = out / f"{dt.date.today().isoformat()}-{tag}"
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    paths[0].write_text(json.dumps(result, indent=1, default=str) + "\n")
    paths[1].write_text(markdown(result))
    if plot(result, stem.with_suffix(".png")):
        paths.append(stem.with_suffix(".png"))
    return paths
