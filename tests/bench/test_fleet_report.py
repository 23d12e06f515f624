"""Suite 4's workloads, oracle and targets, on small inputs worked by hand."""

from __future__ import annotations

from typing import Any

import pytest

from bench.fleet import text
from bench.fleet.report import recovery_s, targets
from bench.fleet.suite import plan
from bench.fleet.workloads import Session, Shape, Turn, build, oracle, repeat_prefills


def test_a_sessions_later_turns_carry_its_history_with_the_answers() -> None:
    session = Session(0.0, "sys words", [Turn("a b", 3, 0.0), Turn("c", 2, 1.0)])
    second = session.messages(1)
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[2]["content"] == text.output_text(3)
    # Turn 2's prompt starts with turn 1's prompt and answer, token for token, as the engine cached them.
    first_ids = text.render_chat(session.messages(0)) + [text.OUTPUT_TOKEN] * 3
    assert text.render_chat(second)[: len(first_ids)] == first_ids


def test_workloads_are_seeded_and_sized() -> None:
    shape = Shape(instances=4, requests=60)
    for name in ("shared", "sessions", "hot"):
        one, again = build(name, shape, 7), build(name, shape, 7)
        assert one == again and sum(len(s.turns) for s in one) == 60
        assert build(name, shape, 8) != one
    assert len({s.system for s in build("hot", shape, 1)}) == 1
    assert len({s.system for s in build("shared", shape, 1)}) <= shape.groups_per_instance * 4


def test_the_oracle_counts_whole_blocks_of_repeated_prompts() -> None:
    system = " ".join(f"w{i}" for i in range(62))  # BOS, role, 62 words, end of turn: 65 tokens
    sessions = [Session(float(i), system, [Turn("x", 1, 0.0)]) for i in range(3)]
    limits = oracle(sessions, blocks=64, block_size=16)
    prompt = len(text.render_chat(sessions[0].messages(0)))  # 65 + role, "x", end of turn, role = 69
    assert prompt == 69
    assert limits["ceiling_hit_rate"] == limits["oracle_hit_rate"] == 2 * 64 / (3 * 69)  # 4 blocks, twice
    tiny = oracle(sessions, blocks=5, block_size=16)  # one prompt's blocks: the next one still finds them
    assert tiny["oracle_hit_rate"] == limits["oracle_hit_rate"]


def test_the_oracle_takes_off_what_a_load_bound_forces_to_be_prefilled_again() -> None:
    a = " ".join(f"a{i}" for i in range(62))  # BOS, role, 62 words, end of turn: 65 tokens, 4 whole blocks
    b = " ".join(f"b{i}" for i in range(30))  # 33 tokens, 2 whole blocks
    sessions = [Session(float(i), a, [Turn("x", 1, 0.0)]) for i in range(6)]
    sessions += [Session(6.0, b, [Turn("x", 1, 0.0), Turn("y", 1, 0.0)])]
    # 8 requests on 4 instances within 1.0 x the mean: 2 an instance, so a's 6 need 3 holders, b's 2 need 1.
    assert repeat_prefills(sessions, instances=4, load_factor=1.0) == 2 * 4 * 16
    assert repeat_prefills(sessions, instances=4, load_factor=2.0) == 1 * 4 * 16  # 4 an instance: a on 2
    assert repeat_prefills(sessions, instances=1, load_factor=1.0) == 0
    limits = oracle(sessions, blocks=1000, block_size=16, instances=4, load_factor=1.0)
    queries = sum(len(text.render_chat(s.messages(i))) for s in sessions for i in range(len(s.turns)))
    assert limits["pooled_hit_rate"] - limits["oracle_hit_rate"] == pytest.approx(2 * 4 * 16 / queries)


def phase(workload: str, policy: str, **values: Any) -> dict[str, Any]:
    base = {"hit_rate": 0.5, "oracle_hit_rate": 1.0, "ttft_p50_s": 1.0, "imbalance": 1.0, "lost": 0}
    return {"workload": workload, "policy": policy, "router_cpu_ms_per_request": 1.0, **base, **values}


def test_targets_are_ratios_within_the_run() -> None:
    phases = [
        phase("sessions", "kv", hit_rate=0.85, oracle_hit_rate=0.9, ttft_p50_s=0.2, router_cpu_ms_per_request=1.2),
        phase("sessions", "prefix", ttft_p50_s=0.3),
        phase("sessions", "round-robin", ttft_p50_s=0.3),
        phase("hot", "kv", imbalance=1.3, router_cpu_ms_per_request=1.4),
        phase("hot", "round-robin"),
    ]
    met = {t["target"]: t["met"] for t in targets(phases)}
    assert met["sessions: kv hit rate / oracle"] is True  # 0.944
    assert met["sessions: kv TTFT p50 / prefix"] is True  # 0.67
    assert met["sessions: kv TTFT p50 / round-robin"] is False  # 0.67 > 0.5
    assert met["hot: kv load imbalance (max/mean)"] is False
    assert met["sessions: router CPU per request, kv / round-robin"] is True  # 1.2
    assert met["hot: router CPU per request, kv / round-robin"] is False  # 1.4: every workload is held to it
    assert "shared: router CPU per request, kv / round-robin" not in met  # not run


def test_recovery_is_the_time_from_each_change_to_a_window_back_at_level() -> None:
    churn = {
        "hit_series": [(0.0, 0.2), (5.0, 0.8), (10.0, 0.5), (15.0, 0.6), (20.0, 0.9), (25.0, 0.9)],
        "events": [(11.0, "+4 instances"), (16.0, "-4 instances")],
    }
    assert recovery_s(churn, 0.9) == 14.0  # 0.81: first reached by the window 20-25 s, 14 s after the first change
    assert recovery_s(churn, 0.5) == 4.0  # 0.45: reached by the window holding each change, 4 s later
    assert recovery_s({**churn, "hit_series": [(0.0, 0.1)]}, 0.9) == float("inf")


def test_the_cpu_target_is_the_median_of_the_pairs_run() -> None:
    phases = [phase("hot", "round-robin"), phase("hot", "kv", router_cpu_ms_per_request=1.5)]
    phases += [phase("hot", "kv", router_cpu_ms_per_request=1.2, repeat=1), phase("hot", "round-robin", repeat=1)]
    phases += [
        phase("hot", "round-robin", router_cpu_ms_per_request=1.1, repeat=2),
        phase("hot", "kv", router_cpu_ms_per_request=1.375, repeat=2),
    ]
    (cpu,) = [t for t in targets(phases) if "router CPU" in t["target"]]
    assert cpu["target"] == "hot: router CPU per request, kv / round-robin (median of 3 pairs: 1.50, 1.20, 1.25)"
    assert cpu["value"] == pytest.approx(1.25) and cpu["met"] is True


def test_extra_pairs_alternate_which_policy_runs_first() -> None:
    assert plan(("round-robin", "prefix", "kv"), 3) == [
        (0, "round-robin"),
        (0, "prefix"),
        (0, "kv"),
        (1, "kv"),
        (1, "round-robin"),
        (2, "round-robin"),
        (2, "kv"),
    ]
    assert plan(("prefix", "kv"), 3) == [(0, "prefix"), (0, "kv")]  # no round-robin to pair with
