"""LoRA-aware placement through real processes: a router in front of scripted engines that load, list,
count and unload adapters as vLLM does (tests.support.scripted_upstream), over real HTTP."""

from __future__ import annotations

import asyncio
import re
import subprocess
from typing import Any

import httpx

from tests.faults.harness import Engine, Fleet, Router
from tests.support.waiting import wait_until

ADAPTERS = {"ad-1": "/adapters/one", "ad-2": "/adapters/two", "ad-3": "/adapters/three"}


def start(
    fleet: Fleet, runtime_load: bool = True, route: dict[str, Any] | None = None, **script: Any
) -> tuple[list[Engine], Router]:
    return fleet.start(
        2,
        tokens=4,
        delay_ms=5,
        script=script,
        route={"lora_adapters": ADAPTERS, "lora_runtime_load": runtime_load, **(route or {})},
    )


def ask(router: Router, model: str) -> httpx.Response:
    return httpx.post(
        f"{router.url}/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 4}, timeout=10
    )


def lora_metric(router: Router, name: str, **labels: str) -> float:
    text = httpx.get(f"{router.url}/metrics", timeout=2).text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted({"model": "scripted", **labels}.items()))
    match = re.search(rf"^tokenyard_route_lora_{name}_total\{{{re.escape(wanted)}\}} (\S+)$", text, re.MULTILINE)
    assert match, f"tokenyard_route_lora_{name}_total{{{wanted}}} is missing"
    return float(match.group(1))


async def test_concurrent_first_requests_load_once_and_the_rest_follow(fleet: Fleet) -> None:
    engines, router = start(fleet, lora_load_ms=300)
    body = {"model": "ad-1", "prompt": "hi", "max_tokens": 4}
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        answers = await asyncio.gather(*(client.post("/v1/completions", json=body) for _ in range(8)))
        stats = [engine.stats() for engine in engines]
        later = [await client.post("/v1/completions", json=body) for _ in range(4)]  # they go where it is loaded
        models = (await client.get("/v1/models")).json()["data"]
    assert [a.status_code for a in answers + later] == [200] * 12
    assert {a.json()["choices"][0]["text"] for a in answers + later} == {"ad-1:t0 ad-1:t1 ad-1:t2 ad-1:t3 "}
    assert {a.json()["model"] for a in answers} == {"ad-1"}
    assert sum(s["lora_loads"] for s in stats) == 1, stats
    holder = next(i for i, s in enumerate(stats) if s["lora_loads"])
    after = [engine.stats() for engine in engines]
    assert after[holder]["lora_requests"] == 12 and after[1 - holder]["lora_requests"] == 0
    assert lora_metric(router, "loads") == 1
    assert lora_metric(router, "placements", decision="loaded") == 8
    assert lora_metric(router, "placements", decision="hit") == 4
    assert {m["id"]: m.get("parent") for m in models} == {
        "scripted": None,
        "ad-1": "scripted",
        "ad-2": "scripted",
        "ad-3": "scripted",
    }


def test_a_full_instance_sends_the_next_adapter_elsewhere_then_the_idle_lru_one_is_unloaded(fleet: Fleet) -> None:
    engines, router = start(fleet, max_loras=1)
    assert ask(router, "ad-1").status_code == 200
    wait_until(lambda: any(e.stats()["lora_loads"] for e in engines), 5, "ad-1 loaded")
    assert ask(router, "ad-2").json()["choices"][0]["text"].startswith("ad-2:")
    assert [e.stats()["lora_loads"] for e in engines] == [1, 1]  # each engine holds one: max_lora="1"
    assert ask(router, "ad-1").status_code == 200  # now ad-2 is the least recently used
    answer = ask(router, "ad-3")
    assert answer.status_code == 200 and answer.json()["choices"][0]["text"].startswith("ad-3:"), answer.text
    held = [
        {m["id"] for m in httpx.get(f"{e.url}/v1/models", timeout=2).json()["data"]} - {"scripted"} for e in engines
    ]
    assert sorted(map(sorted, held)) == [["ad-1"], ["ad-3"]], held
    assert sum(e.stats()["lora_unloads"] for e in engines) == 1
    assert lora_metric(router, "unloads") == 1 and lora_metric(router, "loads") == 3
    lint = subprocess.run(
        ["promtool", "check", "metrics"],
        input=httpx.get(f"{router.url}/metrics").text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


async def test_an_adapter_busy_everywhere_is_not_unloaded_and_the_request_gets_a_clear_503(fleet: Fleet) -> None:
    engines, router = start(fleet, route={"hold_timeout_s": 1.5}, max_loras=1)  # waits for room that long
    assert ask(router, "ad-1").status_code == 200
    assert ask(router, "ad-2").status_code == 200
    for engine in engines:
        engine.control(tokens=400, delay_ms=20)  # eight-second answers
    async with httpx.AsyncClient(base_url=router.url, timeout=30) as client:
        slow = [
            asyncio.ensure_future(client.post("/v1/completions", json={"model": name, "prompt": "hi"}))
            for name in ("ad-1", "ad-2")
        ]
        try:
            await asyncio.sleep(0.5)
            refused = await client.post("/v1/completions", json={"model": "ad-3", "prompt": "hi", "max_tokens": 4})
        finally:
            for task in slow:
                task.cancel()
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "engine_unavailable"
    assert "`ad-3` cannot be loaded now" in error["message"]
    assert sum(e.stats()["lora_unloads"] for e in engines) == 0
    for engine in engines:
        engine.control(tokens=4, delay_ms=5)
    wait_until(lambda: sum(e.stats()["in_flight"] for e in engines) == 0, 10, "the slow answers aborted")
    assert ask(router, "ad-3").json()["choices"][0]["text"].startswith("ad-3:")  # idle now: room is made
    assert sum(e.stats()["lora_unloads"] for e in engines) == 1


def test_a_failed_load_falls_to_the_other_instance_and_failing_everywhere_is_a_503(fleet: Fleet) -> None:
    engines, router = start(fleet, lora_fault="500")
    refused = ask(router, "ad-1")
    assert refused.status_code == 503, refused.text
    assert (
        refused.json()["error"]["message"] == "The LoRA adapter `ad-1` could not be loaded on any instance of "
        "`scripted`."
    )
    assert lora_metric(router, "load_failures") == 2
    engines[1].control(lora_fault="")
    answer = ask(router, "ad-1")
    assert answer.status_code == 200 and answer.json()["choices"][0]["text"].startswith("ad-1:")
    assert engines[1].stats()["lora_loads"] == 1


def test_an_adapter_loaded_outside_the_router_is_found_by_its_health_checks(fleet: Fleet) -> None:
    engines, router = start(fleet, runtime_load=False)
    httpx.post(
        f"{engines[1].url}/v1/load_lora_adapter", json={"lora_name": "ad-2", "lora_path": "/x"}, timeout=2
    ).raise_for_status()

    # Until a health check lists it, the route's policy places it (fallback): on either engine.
    def placed_as_a_hit() -> bool:
        assert ask(router, "ad-2").status_code == 200
        return lora_metric(router, "placements", decision="hit") > 0

    wait_until(placed_as_a_hit, 5, "the router sees ad-2", interval_s=0.1)
    for _ in range(6):
        assert ask(router, "ad-2").json()["choices"][0]["text"].startswith("ad-2:")
    assert sum(e.stats()["lora_loads"] for e in engines) == 1  # no load by the router
    assert lora_metric(router, "placements", decision="hit") >= 7


def test_a_passed_through_path_reaches_the_instance_under_the_adapters_own_name(fleet: Fleet) -> None:
    """vLLM's other paths (here Anthropic's Messages) serve a LoRA adapter too: the request is placed where the
    adapter is loaded and sent under the adapter's name, not the base model's; the answer names the adapter."""
    engines, router = start(fleet)
    assert ask(router, "ad-1").status_code == 200  # loaded on one instance
    holder = next(e for e in engines if e.stats()["lora_loads"])
    body = {"model": "ad-1", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    answer = httpx.post(f"{router.url}/v1/messages", json=body, timeout=10)
    assert answer.status_code == 200 and answer.json()["model"] == "ad-1", answer.text
    seen = [r for r in holder.requests() if r["path"] == "/v1/messages"]
    assert [r["model"] for r in seen] == ["ad-1"]
