"""API keys: which routes need one, the 401 body, digests only, every key compared, the keys file."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import httpx
import openai
import pytest

from gateway.keys import KeyStore, digest, parse_keys_file
from gateway.limit_store import KeyLimits
from gateway.settings import ApiKey
from tests.support.scripted_app import MODEL, chat, scripted_client, settings, state_of

KEYS = ("sk-alpha-0123456789", "sk-beta-9876543210")
GUARDED = [
    ("GET", "/v1/models", None),
    ("GET", f"/v1/models/{MODEL}", None),
    ("POST", "/v1/chat/completions", chat()),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "x"}),
    ("POST", "/v1/embeddings", {"model": MODEL, "input": "x"}),
    ("POST", f"/v1/engines/{MODEL}/embeddings", {"input": "x"}),
    ("GET", "/v1/no-such-route", None),
    ("GET", "/openapi.json", None),
]


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.mark.parametrize(("method", "path", "body"), GUARDED, ids=[f"{m} {p}" for m, p, _ in GUARDED])
async def test_every_model_route_needs_a_key(method: str, path: str, body: dict[str, object] | None) -> None:
    async with scripted_client(settings(api_keys=",".join(KEYS))) as client:
        for headers, message in [
            ({}, "You didn't provide an API key."),
            (_bearer("sk-alpha-012345678"), "Incorrect API key provided."),
            ({"authorization": f"Basic {KEYS[0]}"}, "You didn't provide an API key."),
            (_bearer(KEYS[0].upper()), "Incorrect API key provided."),
        ]:
            response = await client.request(method, path, json=body, headers=headers)
            assert response.status_code == 401
            assert response.json() == {
                "error": {"message": message, "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
            }
            assert response.headers["www-authenticate"] == "Bearer"
        for key in KEYS:
            response = await client.request(method, path, json=body, headers=_bearer(key))
            assert response.status_code != 401
        assert state_of(client).metrics.rejected.labels("auth")._value.get() == 4


async def test_probes_are_open_and_metrics_can_be_guarded() -> None:
    async with scripted_client(settings(api_keys=KEYS[0])) as client:
        assert [(await client.get(p)).status_code for p in ("/health", "/ready", "/metrics")] == [200, 200, 200]
    async with scripted_client(settings(api_keys=KEYS[0], auth={"guard_metrics": True})) as client:
        assert [(await client.get(p)).status_code for p in ("/health", "/ready", "/metrics")] == [200, 200, 401]
        assert (await client.get("/metrics", headers=_bearer(KEYS[0]))).status_code == 200


async def test_no_keys_configured_means_open() -> None:
    async with scripted_client(settings()) as client:
        assert (await client.get("/v1/models")).status_code == 200


async def test_the_sdk_raises_authentication_error() -> None:
    async with scripted_client(settings(api_keys=",".join(KEYS))) as client:
        transport = client._transport  # the same in-process app
        async with httpx.AsyncClient(transport=transport) as http:
            sdk = openai.AsyncOpenAI(base_url="http://test/v1", api_key="sk-wrong", http_client=http, max_retries=0)
            with pytest.raises(openai.AuthenticationError) as err:
                await sdk.models.list()
            assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
            sdk = openai.AsyncOpenAI(base_url="http://test/v1", api_key=KEYS[1], http_client=http, max_retries=0)
            assert [m.id for m in (await sdk.models.list()).data] == [MODEL]


def test_only_digests_are_kept() -> None:
    store = KeyStore([ApiKey(key=KEYS[0], name="team-a")], None)
    assert KEYS[0] not in repr(vars(store))
    assert [(e.name, e.digest) for e in store._static] == [("team-a", digest(KEYS[0]))]
    assert len(digest(KEYS[0])) == 32


def test_every_key_is_compared_with_no_early_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [ApiKey(key=f"sk-key-{i:02d}-abcdefgh") for i in range(10)]
    store = KeyStore(keys, None)
    calls: list[bytes] = []
    real = secrets.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return bool(real(a, b))

    monkeypatch.setattr(secrets, "compare_digest", counting)
    found = store.match("sk-key-00-abcdefgh")  # the first key matches ...
    assert found is not None and found.name == "key-" + digest("sk-key-00-abcdefgh").hex()[:12]
    assert len(calls) == 10  # ... and all ten digests were still compared
    calls.clear()
    assert store.match("sk-nope") is None and len(calls) == 10


def test_keys_file_format() -> None:
    entries = parse_keys_file(
        "# team keys\n\nsk-a-1 name=team-a rpm=600 tpm=200000\n  sk-b-2  \n"
        "sk-c-3 name=batch tokens_per_day=2000000 tokens_per_month=30000000\n"
    )
    assert [(e.name, e.limits) for e in entries] == [
        ("team-a", KeyLimits(600, 200000)),
        ("key-" + digest("sk-b-2").hex()[:12], KeyLimits()),
        ("batch", KeyLimits(None, None, 2_000_000, 30_000_000)),
    ]
    assert entries[1].digest == digest("sk-b-2")
    for bad, why in [
        ("sk-x colour=red", "unknown option"),
        ("sk-x rpm=0", "must be positive"),
        ("sk-x tokens_per_day=0", "must be positive"),
        ("sk-x name=a\nsk-y name=a", "two keys are named 'a'"),
        ("sk-x\nsk-x", "two keys are named"),
    ]:
        with pytest.raises(ValueError, match=why) as err:
            parse_keys_file(bad)
        assert "sk-x" not in str(err.value)


def test_keys_file_is_reloaded_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("sk-first-111 name=first\n")
    now = [0.0]
    store = KeyStore([], path, clock=lambda: now[0])
    assert store.enabled and store.match("sk-first-111") is not None
    path.write_text("sk-second-222 name=second\n")
    os.utime(path, ns=(1, 10**18))  # a different mtime, whatever the file system's clock resolution
    assert store.match("sk-second-222") is None  # checked at most once a second
    now[0] = 1.5
    assert store.match("sk-second-222").name == "second"  # type: ignore[union-attr]
    assert store.match("sk-first-111") is None
    path.write_text("sk-broken rpm=x\n")
    os.utime(path, ns=(1, 2 * 10**18))
    now[0] = 3.0
    assert store.match("sk-second-222") is not None  # a bad file keeps the keys loaded before
    path.unlink()
    now[0] = 4.5
    assert store.match("sk-second-222") is not None


def test_an_empty_keys_file_denies_everything(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# no keys yet\n")
    store = KeyStore([], path)
    assert store.enabled and store.match("") is None and store.match("anything") is None
    with pytest.raises(FileNotFoundError):
        KeyStore([], tmp_path / "absent")


async def test_keys_file_keys_work_over_http(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("sk-file-key-12345 name=from-file\n")
    async with scripted_client(settings(api_keys=KEYS[0], auth={"api_keys_file": path})) as client:
        for key in (KEYS[0], "sk-file-key-12345"):
            assert (await client.get("/v1/models", headers=_bearer(key))).status_code == 200
        assert (await client.get("/v1/models", headers=_bearer(KEYS[1]))).status_code == 401
