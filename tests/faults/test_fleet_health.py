"""One model's outage stays its own: readiness, per-model status, and requests held until an instance is ready.

A router serves two models, `scripted` (a live instance) and `later` (an instance that is not listening yet).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.faults.client import completion, stream, whole
from tests.faults.harness import MODEL, Engine, Fleet, Router
from tests.support.waiting import until

LATER = "later"


class TwoModelRouter(Router):
    """The harness's router with a second route, `later`, over one instance that may not be up."""

    def __init__(self, workdir: Path, live: str, later: str, hold_timeout_s: float) -> None:
        self.later, self.hold_timeout_s = later, hold_timeout_s
        super().__init__(workdir, [live])

    def write_config(self, upstreams: list[str]) -> None:
        super().write_config(upstreams)
        config = yaml.safe_load(self.config.read_text())
        config["routes"].append({"name": LATER, "upstreams": [self.later], "hold_timeout_s": self.hold_timeout_s})
        self.config.write_text(yaml.safe_dump(config))


def start(fleet: Fleet, tmp_path: Path, hold_timeout_s: float) -> tuple[Engine, Router]:
    """The live instance and the router up; the later instance created (its port chosen) but not started."""
    live = Engine(tmp_path, tokens=4, delay_ms=5).start()
    later = Engine(tmp_path, tokens=4, delay_ms=5)
    fleet.engines += [live, later]
    router = TwoModelRouter(tmp_path, live.url, later.url, hold_timeout_s).start()
    fleet.routers.append(router)
    live.wait_ready()
    router.wait_ready()
    return later, router


def gauge(router: Router, name: str, model: str) -> float:
    text = httpx.get(f"{router.url}/metrics", timeout=2).text
    match = re.search(rf'^{name}\{{model="{model}"\}} (\S+)$', text, re.M)
    assert match, f"{name} for {model} is missing"
    return float(match.group(1))


def later_body(**extra: Any) -> dict[str, Any]:
    return {**completion(max_tokens=4), "model": LATER, **extra}


def test_a_model_with_no_instance_leaves_the_router_ready_and_other_models_served(fleet: Fleet, tmp_path: Path) -> None:
    _, router = start(fleet, tmp_path, hold_timeout_s=1.0)
    ready = httpx.get(f"{router.url}/ready", timeout=5)
    assert ready.status_code == 200
    models = ready.json()["models"]
    assert models[MODEL] == {
        "state": "ready",
        "instances": 1,
        "ready_instances": 1,
        "waiting_requests": 0,
        "in_flight_requests": 0,
        "breakers": {"closed": 1, "half_open": 0, "open": 0},
    }
    assert models[LATER]["state"] == "unavailable" and models[LATER]["ready_instances"] == 0
    assert gauge(router, "tokenyard_route_ready_instances", MODEL) == 1
    assert gauge(router, "tokenyard_route_ready_instances", LATER) == 0
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by `make test` (Debian package prometheus)"
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=httpx.get(f"{router.url}/metrics").text, capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr

    served = httpx.post(f"{router.url}/v1/completions", json=completion(max_tokens=4), timeout=10)
    assert served.status_code == 200 and served.json()["choices"][0]["text"]
    started = time.monotonic()
    refused = httpx.post(f"{router.url}/v1/completions", json=later_body(), timeout=10)
    assert time.monotonic() - started >= 1.0  # held for its route's hold_timeout_s first
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert refused.json()["error"] == {
        "message": "No instance of `later` became ready within 1 s.",
        "type": "service_unavailable_error",
        "param": None,
        "code": "engine_unavailable",
    }
    assert httpx.get(f"{router.url}/ready", timeout=5).status_code == 200


async def test_requests_are_held_until_a_late_instance_is_ready_then_served(fleet: Fleet, tmp_path: Path) -> None:
    later, router = start(fleet, tmp_path, hold_timeout_s=60)
    async with httpx.AsyncClient(base_url=router.url, timeout=60) as client:
        streamed = asyncio.create_task(stream(client, later_body()))
        answered = asyncio.create_task(whole(client, later_body()))
        await until(lambda: gauge(router, "tokenyard_route_waiting_requests", LATER) == 2, 10, "both held")
        assert gauge(router, "tokenyard_route_waiting_requests", MODEL) == 0
        assert (await whole(client, completion(max_tokens=4))).status == 200  # the other model is not held up
        await asyncio.sleep(1.0)
        assert not streamed.done() and not answered.done()
        later.start()
        async with asyncio.timeout(30):
            streamed_outcome, answered_outcome = await asyncio.gather(streamed, answered)
    assert streamed_outcome.status == 200 and streamed_outcome.ending == "done" and streamed_outcome.chunks == 4
    assert answered_outcome.status == 200 and answered_outcome.body["choices"][0]["text"]
    assert gauge(router, "tokenyard_route_waiting_requests", LATER) == 0
    assert gauge(router, "tokenyard_route_ready_instances", LATER) == 1


async def test_a_held_client_that_leaves_is_gone_from_the_waiting_gauge_at_once(fleet: Fleet, tmp_path: Path) -> None:
    _, router = start(fleet, tmp_path, hold_timeout_s=60)
    async with httpx.AsyncClient(base_url=router.url, timeout=60) as client:
        held = [
            asyncio.create_task(client.post("/v1/completions", json=later_body(stream=stream_)))
            for stream_ in (True, False)
        ]
        await until(lambda: gauge(router, "tokenyard_route_waiting_requests", LATER) == 2, 10, "both held")
        for task in held:
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.gather(*held)
    gone_at = time.monotonic()
    await until(lambda: gauge(router, "tokenyard_route_waiting_requests", LATER) == 0, 5, "the held requests left")
    print(f"held requests gone {time.monotonic() - gone_at:.2f}s after their clients left")
    assert time.monotonic() - gone_at < 2.0


@pytest.mark.parametrize("streamed", [False, True])
def test_a_held_request_ends_before_the_sdks_read_timeout(fleet: Fleet, tmp_path: Path, streamed: bool) -> None:
    """The openai SDK sends its read timeout (x-stainless-read-timeout); the router holds the request no longer
    than that, less a margin, so the client reads our 503 and Retry-After instead of timing out itself."""
    import openai

    _, router = start(fleet, tmp_path, hold_timeout_s=60)
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", timeout=3.0, max_retries=0)
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as refused:
        client.completions.create(model=LATER, prompt="hello", max_tokens=4, stream=streamed)
    held_s = time.monotonic() - started
    print(f"held {held_s:.2f}s under a 3 s read timeout")
    assert 1.5 <= held_s < 3.0  # held up to a second before the client's timeout, not the route's 60 s
    assert refused.value.status_code == 503 and refused.value.response.headers["retry-after"]
    assert refused.value.body == {  # the SDK hands over the error object
        "message": "No instance of `later` became ready within 2 s.",
        "type": "service_unavailable_error",
        "param": None,
        "code": "engine_unavailable",
    }
    # Without the header (or with a longer timeout) the route's own hold applies: still waiting after 3 s.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{router.url}/v1/completions", json=later_body(), timeout=3.0)
