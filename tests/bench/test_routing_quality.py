"""Suite 3's workload and argument parsing (the suite itself needs two real engines and runs by hand)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from bench.routing_quality import (
    Phase,
    Workload,
    engine_config,
    markdown,
    parse,
    plot,
    requests_for,
    router_config,
    summarise,
)
from gateway.settings import Settings


def test_prompts_share_system_prompts_that_differ_where_the_router_looks() -> None:
    requests = requests_for(Workload(prompts=4, prompt_words=300, requests=40, concurrency=2, max_tokens=4), seed=7)
    systems = Counter(messages[0]["content"] for messages in requests)
    assert len(requests) == 40 and len(systems) == 4
    assert set(systems.values()) == {10}  # each prompt shared equally
    assert len({prompt[:64] for prompt in systems}) == 4  # distinct well inside the router's prefix_chars
    other_phase = {messages[0]["content"] for messages in requests_for(Workload(4, 300, 40, 2, 4), seed=8)}
    assert not other_phase & systems.keys()  # each phase starts cold


def test_generated_configs_are_valid_tokenyard_settings() -> None:
    engine = Settings(**yaml.safe_load(engine_config(8261, kv_blocks=64, events_port=8280)))
    assert engine.models[0].engine_args["enable_prefix_caching"] is True
    assert engine.models[0].engine_args["num_gpu_blocks_override"] == 64
    assert engine.models[0].kv_events_endpoint == "tcp://*:8280"
    assert engine.models[0].kv_events_replay_endpoint == "tcp://*:8281"
    urls = ["http://127.0.0.1:8261", "http://127.0.0.1:8262"]
    router = Settings(**yaml.safe_load(router_config(8263, "prefix", urls, tokenizer="/models/gemma")))
    assert router.routes[0].policy == "prefix" and len(router.routes[0].upstreams) == 2
    assert router.routes[0].kv_tokenizer is None  # only the kv router tokenizes
    assert router.router.prefix_load_slack == 0  # CPU engines: the load bound without slack
    kv = Settings(**yaml.safe_load(router_config(8264, "kv", urls, tokenizer="/models/gemma")))
    assert kv.routes[0].policy == "kv" and kv.routes[0].kv_tokenizer == "/models/gemma"


def test_arguments() -> None:
    args = parse(["--prompts", "3", "--rounds", "1", "--dry-run"])
    assert args.prompts == 3 and args.dry_run
    assert args.policies == ("kv", "prefix", "least-loaded", "round-robin")
    assert parse(["--policies", "kv, prefix"]).policies == ("kv", "prefix")
    with pytest.raises(SystemExit):
        parse(["--policies", "fastest"])
    with pytest.raises(SystemExit):
        parse(["--requests", "0"])


def _result() -> dict[str, object]:
    ttft = {"kv": 150.0, "prefix": 300.0, "round-robin": 900.0}
    phases = [
        Phase(policy, r, 64, 0, 30.0, 2.0 + (policy == "prefix"), 16.0, ttft[policy], 2000.0, 0.8)
        for r in range(2)
        for policy in ("kv", "prefix", "round-robin")
    ]
    return {
        "date": "2026-11-22T00:00:00+00:00",
        "workload": asdict(Workload(8, 900, 64, 4, 8)),
        "kv_blocks": None,
        "phases": [asdict(p) for p in phases],
        "summary": summarise(phases),
    }


def test_a_result_is_written_as_markdown() -> None:
    result = _result()
    summary = result["summary"]
    assert summary["prefix_vs_round_robin_ttft_p50"]["median"] == pytest.approx(1 / 3)  # type: ignore[index]
    assert summary["kv_vs_prefix_ttft_p50"]["median"] == pytest.approx(1 / 2)  # type: ignore[index]
    assert "kv_vs_least_loaded_ttft_p50" not in summary  # least-loaded did not run
    text = markdown(result)
    assert "| prefix / round-robin, ttft_p50 | 0.33× |" in text and text.count("| prefix |") == 3
    assert "| kv | 150 | 2000 | 2.00 | 0.80 |" in text  # the medians over rounds


def test_a_result_is_plotted_where_matplotlib_is_installed_and_skipped_in_words_where_not(tmp_path: Path) -> None:
    """matplotlib is the `bench` extra (`make bench-routing` installs it; the test run does not)."""
    import importlib.util

    drawn = plot(_result(), tmp_path / "r.png")
    if importlib.util.find_spec("matplotlib") is None:
        assert drawn is False and not (tmp_path / "r.png").exists()
    else:
        assert drawn and (tmp_path / "r.png").stat().st_size > 1000


def test_the_kv_routers_decisions_are_counted_per_phase() -> None:
    from bench.routing_quality import kv_phase

    before = {"decisions": {"cached": 70, "approximate": 20}}
    after = {"events_instances": ["a", "b"], "decisions": {"cached": 150, "approximate": 34}}
    assert kv_phase(before, after) == {"events_instances": ["a", "b"], "decisions": {"cached": 80, "approximate": 14}}
    assert kv_phase(None, None) is None
