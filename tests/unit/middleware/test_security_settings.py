"""The security flags and settings, CORS (off by default), and the server options they become."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.cli import _parser, settings_from_args
from gateway.server import uvicorn_options
from gateway.settings import Settings
from gateway.uvicorn_coupling import BoundedProtocol
from tests.support.scripted_app import scripted_client, settings

KEYS = ("sk-flag-aaaa-1111", "sk-flag-bbbb-2222")


def _from_flags(*flags: str) -> Settings:
    return settings_from_args(_parser().parse_args(["serve", *flags]))


def test_keys_from_the_flag_the_env_and_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert [k.key.get_secret_value() for k in _from_flags("--api-keys", ",".join(KEYS)).api_keys] == list(KEYS)
    monkeypatch.setenv("TOKENYARD_API_KEYS", f" {KEYS[1]} ,")
    assert [k.key.get_secret_value() for k in Settings().api_keys] == [KEYS[1]]
    assert [k.key.get_secret_value() for k in _from_flags("--api-keys", KEYS[0]).api_keys] == [KEYS[0]]  # CLI wins
    monkeypatch.delenv("TOKENYARD_API_KEYS")
    config = tmp_path / "c.yaml"
    config.write_text(f"api_keys:\n  - {KEYS[0]}\n  - {{key: {KEYS[1]}, name: batch, tokens_per_minute: 9000}}\n")
    keys = Settings(config=config).api_keys
    assert [(k.name, k.tokens_per_minute) for k in keys] == [(None, None), ("batch", 9000)]
    with pytest.raises(ValidationError):
        Settings(api_keys=[{"key": ""}])


def test_keys_never_show_in_the_settings_dump() -> None:
    config = _from_flags("--api-keys", ",".join(KEYS))
    for dump in (config.model_dump_json(), repr(config), str(config.model_dump(mode="json"))):
        assert all(key not in dump for key in KEYS)
    assert config.model_dump(mode="json")["api_keys"][0]["key"] == "**********"


def test_cors_and_auth_flags_merge_with_yaml(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("cors:\n  allowed_headers: [authorization]\nauth:\n  guard_metrics: false\n")
    parsed = _from_flags(
        "--config",
        str(config),
        "--allowed-origins",
        '["https://a.example", "https://b.example"]',
        "--allowed-methods",
        "GET,POST,OPTIONS",
        "--allow-credentials",
        "--guard-metrics",
        "--api-keys-file",
        "/run/keys",
    )
    assert parsed.cors.allowed_origins == ["https://a.example", "https://b.example"]
    assert parsed.cors.allowed_methods == ["GET", "POST", "OPTIONS"]
    assert parsed.cors.allowed_headers == ["authorization"]  # from YAML: flags merge field by field
    assert parsed.cors.allow_credentials and parsed.auth.guard_metrics
    assert parsed.auth.api_keys_file == Path("/run/keys")
    assert Settings().cors.allowed_origins == []  # off by default


def test_tls_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    direct = _from_flags("--ssl-keyfile", "/k.pem", "--ssl-certfile", "/c.pem")
    assert (direct.tls.ssl_keyfile, direct.tls.ssl_certfile) == (Path("/k.pem"), Path("/c.pem"))
    options = uvicorn_options(direct)
    assert (options["ssl_keyfile"], options["ssl_certfile"]) == ("/k.pem", "/c.pem")
    with pytest.raises(ValidationError, match="both"):
        _from_flags("--ssl-keyfile", "/k.pem")
    monkeypatch.delenv("SSL_CERTFILE", raising=False)
    monkeypatch.setenv("SSL_KEYFILE", "/env-k.pem")
    with pytest.raises(SystemExit, match="SSL_CERTFILE"):
        _from_flags("--ssl")
    monkeypatch.setenv("SSL_CERTFILE", "/env-c.pem")
    fastchat = _from_flags("--ssl")
    assert (fastchat.tls.ssl_keyfile, fastchat.tls.ssl_certfile) == (Path("/env-k.pem"), Path("/env-c.pem"))
    assert "ssl_keyfile" not in uvicorn_options(Settings())


def test_server_options_bound_slow_clients_and_leave_logging_to_us() -> None:
    options = uvicorn_options(Settings(limits={"header_timeout_s": 3, "keep_alive_timeout_s": 7}))
    assert options["log_config"] is None and options["access_log"] is False
    assert options["timeout_keep_alive"] == 7 and options["timeout_graceful_shutdown"] == 1
    assert options["http"].func is BoundedProtocol and options["http"].keywords["limits"].header_timeout_s == 3


async def test_cors_is_off_by_default() -> None:
    preflight = {"origin": "https://evil.example", "access-control-request-method": "POST"}
    async with scripted_client(settings()) as client:
        response = await client.options("/v1/chat/completions", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
        assert "access-control-allow-origin" not in (await client.get("/v1/models", headers=preflight)).headers


async def test_cors_when_configured() -> None:
    cors = {"allowed_origins": ["https://app.example"], "allowed_methods": ["GET", "POST"]}
    async with scripted_client(settings(api_keys=KEYS[0], cors=cors)) as client:
        preflight = await client.options(
            "/v1/chat/completions",
            headers={
                "origin": "https://app.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 200  # answered before auth: a preflight carries no key
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert set(preflight.headers["access-control-allow-methods"].split(", ")) == {"GET", "POST"}
        denied = await client.get("/v1/models", headers={"origin": "https://app.example"})
        assert denied.status_code == 401  # and the browser may read why
        assert denied.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in denied.headers["access-control-expose-headers"]
        other = await client.options(
            "/v1/models", headers={"origin": "https://evil.example", "access-control-request-method": "GET"}
        )
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
