"""resume_streams: a stream whose instance fails mid-way goes on on another instance, and the client sees one
whole stream. The scripted engines answer `t0 t1 ...`, and a continuation from where its prompt (or final
assistant message) stops: text lost or repeated at the seam would show in the answer."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from tests.faults.harness import MODEL, Engine, Fleet, Router
from tests.support.waiting import wait_until

TOKENS = 20
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
PROMPT = "say something"  # two words: two prompt tokens to the scripted engine


@pytest.fixture
def fleet(fleet_both: Fleet) -> Fleet:
    """Every test here runs with the router's splice on and off (tests/faults/conftest.py)."""
    return fleet_both


@dataclass
class Seen:
    """A streamed answer as the client read it."""

    events: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False

    @property
    def text(self) -> str:
        return "".join(_text(choice) for event in self.events for choice in event.get("choices") or ())

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [event for event in self.events if "error" in event]

    @property
    def finishes(self) -> list[str]:
        return [c["finish_reason"] for e in self.events for c in e.get("choices") or () if c.get("finish_reason")]

    @property
    def usages(self) -> list[dict[str, Any]]:
        return [event["usage"] for event in self.events if event.get("usage")]


def _text(choice: dict[str, Any]) -> str:
    return str((choice.get("delta") or {}).get("content") or "" if "delta" in choice else choice.get("text") or "")


def expected(count: int) -> str:
    return "".join(f"t{i} " for i in range(count))


def body(path: str, **extra: Any) -> dict[str, Any]:
    ask = {"messages": [{"role": "user", "content": PROMPT}]} if path == CHAT else {"prompt": PROMPT}
    return {"model": MODEL, "stream": True, "stream_options": {"include_usage": True}, **ask, **extra}


def read(router: Router, path: str, ask: dict[str, Any], after: int = 0, then: Any = None) -> Seen:
    """Stream `ask`, calling `then()` once `after` text deltas have come."""
    seen = Seen()
    with httpx.stream("POST", f"{router.url}{path}", json=ask, timeout=30) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                seen.done = True
                continue
            seen.events.append(orjson.loads(line[6:]))
            if then is not None and sum(1 for e in seen.events for c in e.get("choices") or () if _text(c)) == after:
                then()
                then = None
    return seen


def resumed(router: Router, outcome: str) -> float:
    text = httpx.get(f"{router.url}/metrics", timeout=2).text
    pattern = rf'^tokenyard_route_resumed_streams_total\{{model="{MODEL}",outcome="{outcome}"\}} (\S+)$'
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else 0.0


def counted(router: Router, outcome: str, count: int = 1) -> None:
    """The metric says so (it is counted as the router reads the instance's end, just after [DONE] went out)."""
    wait_until(lambda: resumed(router, outcome) == count, 5, f"{count} stream(s) {outcome}")


def assert_one_stream(seen: Seen, count: int, finish: str, path: str) -> None:
    """One stream, as if nothing had happened: all of the text once, one id, one finish, one usage total."""
    assert seen.errors == [] and seen.done
    assert seen.text == expected(count)
    assert seen.finishes == [finish]
    assert len({event["id"] for event in seen.events}) == 1
    assert len({event["created"] for event in seen.events}) == 1
    if path == CHAT:
        roles = [c for e in seen.events for c in e["choices"] if "role" in c.get("delta", {})]
        assert len(roles) == 1
    (usage,) = seen.usages
    assert usage == {"prompt_tokens": 2, "completion_tokens": count, "total_tokens": 2 + count}


def serving(engines: list[Engine]) -> Engine:
    (busy,) = [engine for engine in engines if engine.stats()["in_flight"] == 1]
    return busy


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_a_killed_instance_s_stream_goes_on_on_the_other(fleet: Fleet, path: str) -> None:
    engines, router = fleet.start(2, tokens=TOKENS, delay_ms=40, route={"resume_streams": True})
    seen = read(router, path, body(path), after=6, then=lambda: serving(engines).kill())
    assert [engine.proc is None for engine in engines].count(True) == 1  # one of them was killed mid-stream
    assert_one_stream(seen, TOKENS, "stop", path)
    counted(router, "resumed")


@pytest.mark.parametrize("fault", ["reset", "error", "stall"])
@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_each_mid_stream_fault_is_resumed(fleet: Fleet, path: str, fault: str) -> None:
    # Both engines fail after 5 tokens of an answer's start; a continuation is spared (scripted_upstream).
    script = {"fault": fault, "fault_after": 5}
    _, router = fleet.start(
        2, tokens=TOKENS, delay_ms=5, route={"resume_streams": True}, script=script, idle_timeout_s=1
    )
    assert_one_stream(read(router, path, body(path)), TOKENS, "stop", path)
    counted(router, "resumed")


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_max_tokens_counts_what_was_sent_before_the_seam(fleet: Fleet, path: str) -> None:
    script = {"fault": "reset", "fault_after": 4}
    _, router = fleet.start(2, tokens=TOKENS, delay_ms=5, route={"resume_streams": True}, script=script)
    assert_one_stream(read(router, path, body(path, max_tokens=11)), 11, "length", path)


def test_a_seam_at_the_last_token_ends_the_stream_at_once(fleet: Fleet) -> None:
    """Every token allowed was sent before the failure: the stream ends with finish `length` and nothing more."""
    script = {"fault": "reset", "fault_after": 6}
    engines, router = fleet.start(2, tokens=TOKENS, delay_ms=5, route={"resume_streams": True}, script=script)
    assert_one_stream(read(router, CHAT, body(CHAT, max_tokens=6)), 6, "length", CHAT)
    assert sum(engine.stats()["requests"] for engine in engines) == 1  # no continuation was needed


def test_usage_per_chunk_counts_the_whole_answer(fleet: Fleet) -> None:
    script = {"fault": "reset", "fault_after": 5}
    _, router = fleet.start(2, tokens=TOKENS, delay_ms=5, route={"resume_streams": True}, script=script)
    options = {"include_usage": True, "continuous_usage_stats": True}
    seen = read(router, COMPLETIONS, body(COMPLETIONS, stream_options=options))
    assert seen.errors == [] and seen.text == expected(TOKENS)
    counts = [usage["completion_tokens"] for usage in seen.usages]
    assert counts == sorted(counts) and counts[-1] == TOKENS  # never back to 0 at the seam
    assert {usage["prompt_tokens"] for usage in seen.usages} == {2}


def test_without_the_client_asking_no_usage_comes(fleet: Fleet) -> None:
    script = {"fault": "reset", "fault_after": 5}
    _, router = fleet.start(2, tokens=TOKENS, delay_ms=5, route={"resume_streams": True}, script=script)
    ask = body(CHAT)
    del ask["stream_options"]
    seen = read(router, CHAT, ask)
    assert seen.errors == [] and seen.done and seen.text == expected(TOKENS) and seen.usages == []


@pytest.mark.parametrize(
    ("path", "extra"),
    [(CHAT, {"n": 2}), (CHAT, {"logprobs": True}), (COMPLETIONS, {"echo": True}), (COMPLETIONS, {"logprobs": 1})],
)
def test_what_cannot_be_resumed_ends_with_the_error_event(fleet: Fleet, path: str, extra: dict[str, Any]) -> None:
    script = {"fault": "reset", "fault_after": 5}
    _, router = fleet.start(2, tokens=TOKENS, delay_ms=5, route={"resume_streams": True}, script=script)
    seen = read(router, path, body(path, **extra))
    assert len(seen.errors) == 1 and not seen.done
    counted(router, "refused")
    assert resumed(router, "resumed") == 0


def test_off_by_default_a_failure_ends_the_stream(fleet: Fleet) -> None:
    script = {"fault": "reset", "fault_after": 5}
    _, router = fleet.start(2, tokens=TOKENS, delay_ms=5, script=script)
    seen = read(router, CHAT, body(CHAT))
    assert len(seen.errors) == 1 and not seen.done and seen.text == expected(5)


def test_a_stream_no_instance_can_go_on_with_ends_with_the_error_event(fleet: Fleet) -> None:
    """The only other instance is gone too: the continuation fails, and the client gets the error event."""
    engines, router = fleet.start(2, tokens=TOKENS, delay_ms=40, route={"resume_streams": True}, hold_timeout_s=0)

    def kill_both() -> None:
        busy = serving(engines)
        for engine in sorted(engines, key=lambda engine: engine is busy):  # the idle one first
            engine.kill()

    started = time.monotonic()
    seen = read(router, CHAT, body(CHAT), after=3, then=kill_both)
    assert len(seen.errors) == 1 and not seen.done
    assert seen.text.startswith(expected(3)) and expected(TOKENS).startswith(seen.text)  # what came, once
    assert time.monotonic() - started < 15
    counted(router, "failed")
