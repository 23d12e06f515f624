"""Issue 33, the router's side: what a client sends must not crash a route, slip past it, or pin memory in it.
Real router processes in front of scripted instances (tests.support.scripted_upstream)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import orjson
import pytest
import zmq

from tests.conftest import free_port
from tests.faults.harness import MODEL, Engine, Fleet, Router
from tests.support.waiting import until, wait_until

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "say something"}]


@pytest.mark.parametrize("best_of", ["abc", [2], {"n": 2}])
def test_a_resumable_stream_with_a_bad_count_is_a_400(fleet: Fleet, best_of: object) -> None:
    engines, router = fleet.start(1, tokens=4, delay_ms=1, route={"resume_streams": True}, log_level="info")
    for field in ("best_of", "n", "max_tokens"):
        body = {"model": MODEL, "messages": MESSAGES, "stream": True, field: best_of}
        answer = httpx.post(f"{router.url}{CHAT}", json=body, timeout=10)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == field
    assert "Traceback" not in router.log_path.read_text()
    ok = httpx.post(f"{router.url}{CHAT}", json={"model": MODEL, "messages": MESSAGES, "stream": True, "n": "1"})
    assert ok.status_code == 200 and ok.text.rstrip().endswith("data: [DONE]")


def _form(*parts: tuple[str, bytes, bool]) -> bytes:
    """A multipart body of (name, value, is_file) parts."""
    out = b""
    for name, value, is_file in parts:
        filename = b'; filename="a.wav"\r\ncontent-type: audio/wav' if is_file else b""
        out += b"--" + BOUNDARY + b'\r\ncontent-disposition: form-data; name="%s"%s\r\n\r\n' % (name.encode(), filename)
        out += value + b"\r\n"
    return out + b"--" + BOUNDARY + b"--\r\n"


BOUNDARY = b"hardening-boundary-33"


def test_a_second_model_field_or_key_is_refused(fleet: Fleet) -> None:
    (engine,), router = fleet.start(1, tokens=4, delay_ms=1)
    audio = bytes(range(256)) * 1024  # 256 KiB: the second field comes well after routing
    form_type = {"content-type": f"multipart/form-data; boundary={BOUNDARY.decode()}"}
    for second_first in (False, True):
        parts = [("model", MODEL.encode(), False), ("file", audio, True), ("model", b"other-model", False)]
        if second_first:
            parts = [parts[0], parts[2], parts[1]]
        answer = httpx.post(
            f"{router.url}/v1/audio/transcriptions", content=_form(*parts), headers=form_type, timeout=10
        )
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == "model"
    assert engine.stats()["completed"] == 0
    ok = httpx.post(
        f"{router.url}/v1/audio/transcriptions",
        content=_form(("model", MODEL.encode(), False), ("file", audio, True)),
        headers=form_type,
        timeout=10,
    )
    assert ok.status_code == 200 and ok.json()["model"] == MODEL
    json_type = {"content-type": "application/json"}
    for path, rest in [
        (CHAT, b'"messages":[{"role":"user","content":"hi"}]'),
        ("/v1/rerank", b'"query":"q","documents":["a"]'),
    ]:
        for second in (b'"model":"other-model"', b'"m\\u006fdel":"other-model"'):
            raw = b'{"model":"%s",%s,%s}' % (MODEL.encode(), rest, second)
            answer = httpx.post(f"{router.url}{path}", content=raw, headers=json_type, timeout=10)
            assert answer.status_code == 400, (path, answer.text)
            assert answer.json()["error"]["param"] == "model"
    nested = b'{"model":"%s","messages":[{"role":"user","content":"hi"}],"metadata":{"model":"x"}}' % MODEL.encode()
    assert httpx.post(f"{router.url}{CHAT}", content=nested, headers=json_type, timeout=10).status_code == 200


def _kv_status(router: Router) -> dict[str, Any]:
    ready = httpx.get(f"{router.url}/ready", timeout=5).json()
    found: dict[str, Any] = ready["models"][MODEL]["kv_routing"]
    return found


class KvPublisher:
    """The instance's KV events, as the test publishes them (vLLM's wire: topic, sequence number, msgpack batch)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.PUB)
        self.socket.bind(f"tcp://127.0.0.1:{self.port}")
        self.seq = 0

    def publish(self, *events: dict[str, Any]) -> None:
        self.socket.send_multipart(
            [b"", self.seq.to_bytes(8, "big"), msgspec.msgpack.encode([time.time(), list(events), None])]
        )
        self.seq += 1

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


@pytest.fixture
def kv_events() -> Iterator[KvPublisher]:
    publisher = KvPublisher()
    try:
        yield publisher
    finally:
        publisher.close()


def _kv_fleet(fleet: Fleet, events: KvPublisher, **router: Any) -> tuple[Engine, Router]:
    (engine,), started = fleet.start(
        1, tokens=2, delay_ms=1, policy="kv", route={"kv_events": {"port": events.port}}, **router
    )

    def synced() -> bool:  # an empty batch: the instance holds nothing, and the router has its events
        events.publish()
        return bool(_kv_status(started)["events_instances"] == [engine.url])

    wait_until(synced, 15, "the instance's KV events")
    return engine, started


def _stored(hashes: list[Any], tokens: list[int], parent: Any = None) -> dict[str, Any]:
    return {
        "type": "BlockStored",
        "block_hashes": hashes,
        "parent_block_hash": parent,
        "token_ids": tokens,
        "block_size": 4,
    }


def test_the_kv_tokenize_cache_is_bounded_in_bytes_and_keeps_no_refused_prompt(
    fleet: Fleet, kv_events: KvPublisher
) -> None:
    cap = 200_000
    _, router = _kv_fleet(
        fleet, kv_events, script={"poison": "POISON"}, kv_tokenize_cache_bytes=cap, kv_tokenize_cache_ttl_s=3
    )
    words = " ".join(f"w{i}" for i in range(3000))  # 3,000 tokens at the scripted /tokenize: 24 KB of ids
    for n in range(30):
        refused = httpx.post(f"{router.url}/v1/completions", json={"model": MODEL, "prompt": f"POISON {n} {words}"})
        assert refused.status_code >= 400
    assert _kv_status(router)["tokenize_cache"] == {"entries": 0, "bytes": 0}
    for n in range(30):
        served = httpx.post(f"{router.url}/v1/completions", json={"model": MODEL, "prompt": f"{n} {words}"})
        assert served.status_code == 200
        assert 0 < _kv_status(router)["tokenize_cache"]["bytes"] <= cap
    # Past the TTL every older entry goes with the next request, whatever it asks: only its own stays.
    wait_until(
        lambda: (
            httpx.post(f"{router.url}/v1/completions", json={"model": MODEL, "prompt": "short one"}).status_code == 200
            and _kv_status(router)["tokenize_cache"]["entries"] == 1
        ),
        15,
        "the older entries expired",
        interval_s=0.5,
    )


def test_a_chats_next_turn_is_routed_on_the_ids_kept_for_its_previous_turn(
    fleet: Fleet, kv_events: KvPublisher
) -> None:
    _, router = _kv_fleet(fleet, kv_events)
    turn1 = [{"role": "user", "content": "hello there"}]
    turn2 = [*turn1, {"role": "assistant", "content": "hi"}, {"role": "user", "content": "and now"}]
    turn3 = [*turn2, {"role": "assistant", "content": "yes"}, {"role": "user", "content": "once more"}]
    kept = []
    for messages in (turn1, turn2, turn3):
        answer = httpx.post(f"{router.url}/v1/chat/completions", json={"model": MODEL, "messages": messages})
        assert answer.status_code == 200
        kept.append(_kv_status(router)["tokenize_cache"]["entries"])
    # Turn 2 asked no /tokenize (nothing new kept): it went on turn 1's ids. Turn 3 asked, as turn 2's were
    # never kept.
    assert kept == [1, 1, 2]


def test_with_turn_reuse_off_every_turn_asks_for_its_own_ids(fleet: Fleet, kv_events: KvPublisher) -> None:
    _, router = _kv_fleet(fleet, kv_events, kv_tokenize_reuse_turns=False)
    turn1 = [{"role": "user", "content": "hello there"}]
    turn2 = [*turn1, {"role": "assistant", "content": "hi"}, {"role": "user", "content": "and now"}]
    for messages, entries in ((turn1, 1), (turn2, 2)):
        answer = httpx.post(f"{router.url}/v1/chat/completions", json={"model": MODEL, "messages": messages})
        assert answer.status_code == 200
        assert _kv_status(router)["tokenize_cache"]["entries"] == entries


def test_an_unreadable_kv_batch_is_skipped_and_the_index_keeps_following(fleet: Fleet, kv_events: KvPublisher) -> None:
    _, router = _kv_fleet(fleet, kv_events, kv_max_blocks=100)
    kv_events.publish(_stored([1], [1, 2, 3, 4]))
    wait_until(lambda: _kv_status(router)["blocks_indexed"] == 1, 10, "a block indexed")
    # 4 KB hashes are not vLLM's (an int, or 32 bytes): the batch is unreadable, and so not in the index. The
    # next batch then follows a hole: the index starts again from it (nothing is known of the lost one).
    kv_events.publish(_stored([b"h" * 4096 + bytes([i]) for i in range(50)], list(range(200))))
    kv_events.publish(_stored([3], [5, 6, 7, 8]))
    wait_until(lambda: _kv_status(router)["blocks_indexed"] == 1, 10, "only the readable batch's block")
    # A token id of 2**63 is a valid msgpack uint64 but no token id: unreadable as well, and the subscriber lives.
    kv_events.publish(_stored([4], [2**63, 2, 3, 4]))
    kv_events.publish(_stored([5, 6], list(range(8))))
    wait_until(lambda: _kv_status(router)["blocks_indexed"] == 2, 10, "the batch after the unreadable one")
    log = router.log_path.read_text()
    assert "a batch we cannot read" in log and "stopped" not in log


def test_an_event_without_an_end_is_cut_at_its_bound(fleet_both: Fleet) -> None:
    cap = 1024 * 1024
    (engine,), router = fleet_both.start(
        1, tokens=4, delay_ms=2, script={"fault": "unended"}, max_event_bytes=cap, breaker_failures=1, idle_timeout_s=30
    )
    started = time.monotonic()
    body = {"model": MODEL, "messages": MESSAGES, "stream": True}
    answer = httpx.post(f"{router.url}{CHAT}", json=body, timeout=30)
    assert answer.status_code == 200
    events = [line[6:] for line in answer.text.splitlines() if line.startswith("data: ")]
    assert '"role":"assistant"' in events[0]  # what came before the unended event was passed on
    error = orjson.loads(events[-1])["error"]
    assert f"longer than {cap} bytes" in error["message"]
    assert time.monotonic() - started < 20  # not at request_timeout_s
    assert len(answer.content) < 64 * 1024  # none of the unended event reached the client
    wait_until(lambda: engine.stats()["aborted"] == 1, 10, "the instance's connection closed")
    assert router.metric("tokenyard_breaker_state", engine.url) == 2  # counted as the instance's failure


def test_a_hold_that_ends_in_503_says_how_long_to_wait(fleet: Fleet) -> None:
    router = Router(fleet.workdir, [f"http://127.0.0.1:{free_port()}"], route={"hold_timeout_s": 2.5}).start()
    fleet.routers.append(router)
    router.wait_ready()
    answer = httpx.post(f"{router.url}{CHAT}", json={"model": MODEL, "messages": MESSAGES}, timeout=30)
    assert answer.status_code == 503 and "within 2.5 s" in answer.json()["error"]["message"]
    assert answer.headers["retry-after"] == "3"


def test_a_whole_answer_to_a_stream_request_is_named_and_not_retried(fleet: Fleet) -> None:
    engines, router = fleet.start(2, tokens=4, delay_ms=1, script={"fault": "whole"})
    body = {"model": MODEL, "messages": MESSAGES, "stream": True}
    answer = httpx.post(f"{router.url}{CHAT}", json=body, timeout=30)
    assert answer.status_code == 503
    assert "not an event stream" in answer.json()["error"]["message"]
    assert sum(engine.stats()["requests"] for engine in engines) == 1  # the same answer is not asked for again


async def test_held_bodies_are_bounded_in_bytes(fleet: Fleet) -> None:
    config = {"limits": {"max_held_bytes": 2 * 1024 * 1024}}
    router = Router(fleet.workdir, [f"http://127.0.0.1:{free_port()}"], config=config, route={"hold_timeout_s": 60})
    fleet.routers.append(router.start())
    router.wait_ready()
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 400_000}]}  # counted 3 x 400 KB held
    async with httpx.AsyncClient(base_url=router.url, timeout=90) as client:

        def waiting() -> int:
            found: int = httpx.get(f"{router.url}/ready").json()["models"][MODEL]["waiting_requests"]
            return found

        held = [asyncio.ensure_future(client.post(CHAT, json=big))]
        try:
            await until(lambda: waiting() == 1, 10, "the first held")
            refused = await client.post(CHAT, json=big)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
            assert "max_held_bytes" in refused.json()["error"]["message"]
            held.append(asyncio.ensure_future(client.post(CHAT, json={"model": MODEL, "messages": MESSAGES})))
            await until(lambda: waiting() == 2, 10, "a small one held beside it: it fits")
        finally:
            for request in held:
                request.cancel()
            await asyncio.gather(*held, return_exceptions=True)


async def test_an_alias_shares_its_routes_admission_slots(fleet: Fleet) -> None:
    config = {"limits": {"max_in_flight": 1, "max_queue": 0}}
    _, router = fleet.start(1, tokens=200, delay_ms=10, config=config, aliases=("other-name",))
    stream = {"model": MODEL, "prompt": "hi", "stream": True}
    async with httpx.AsyncClient(base_url=router.url, timeout=30) as client:
        async with client.stream("POST", "/v1/completions", json=stream) as first:
            assert first.status_code == 200
            for name in (MODEL, "other-name"):
                refused = await client.post("/v1/completions", json={**stream, "model": name})
                assert refused.status_code == 429, (name, refused.text)
                assert refused.json()["error"]["code"] == "server_overloaded"
    metrics = httpx.get(f"{router.url}/metrics").text
    assert 'tokenyard_queue_depth{model="other-name"}' not in metrics
