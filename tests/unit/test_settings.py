"""Settings precedence (CLI > env > YAML > defaults) and the shipped YAML examples."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.cli import _parser, settings_from_args
from gateway.settings import BUILTIN_GEMMA, Settings

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_defaults_serve_the_embedded_models() -> None:
    settings = Settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert [m.model for m in settings.models][0] == BUILTIN_GEMMA
    assert {m.kind for m in settings.models} == {"generate", "embed"}


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("host: 10.0.0.1\nport: 9000\nlog_level: debug\n")
    assert Settings(config=config).port == 9000  # YAML over defaults
    monkeypatch.setenv("TOKENYARD_PORT", "9100")
    assert Settings(config=config).port == 9100  # env over YAML
    args = _parser().parse_args(["serve", "--config", str(config), "--port", "9200"])
    settings = settings_from_args(args)
    assert settings.port == 9200  # CLI over env
    assert settings.host == "10.0.0.1" and settings.log_level == "debug"


def test_cli_model_replaces_the_model_list() -> None:
    args = _parser().parse_args(["serve", "--model", "/models/x", "--served-model-name", "x", "--max-model-len", "512"])
    settings = settings_from_args(args)
    assert [(m.name, m.model, m.max_model_len) for m in settings.models] == [("x", "/models/x", 512)]


def test_engine_dead_exit_defaults_to_5_s_and_null_keeps_the_process_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings().engine_dead_exit_s == 5.0
    config = tmp_path / "c.yaml"
    config.write_text("engine_dead_exit_s: null\n")
    assert Settings(config=config).engine_dead_exit_s is None
    monkeypatch.setenv("TOKENYARD_ENGINE_DEAD_EXIT_S", "null")  # what an env var can say for YAML's null
    assert Settings().engine_dead_exit_s is None
    monkeypatch.setenv("TOKENYARD_ENGINE_DEAD_EXIT_S", "0")
    assert Settings().engine_dead_exit_s == 0.0


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Settings(config=tmp_path / "absent.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_configs_load(path: Path) -> None:
    settings = Settings(config=path)
    assert settings.models and all(m.name for m in settings.models)


@pytest.mark.parametrize("url", ["http://admin:s3cretpw@10.0.0.5:8000", "https://s3cretpw@vllm.internal"])
def test_an_upstream_url_with_credentials_is_refused_without_echoing_them(url: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(routes=[{"name": "m", "upstreams": ["http://10.0.0.4:8000", url]}])
    text = str(refused.value)
    assert "api_key" in text and url.replace("admin:", "").replace("s3cretpw@", "") in text
    assert "s3cretpw" not in text and "admin" not in text


def test_a_kubernetes_api_url_with_credentials_is_refused() -> None:
    discovery = {"mode": "kubernetes", "service": "vllm", "api_url": "https://u:s3cretpw@k8s:6443"}
    with pytest.raises(ValidationError, match="token_file") as refused:
        Settings(routes=[{"name": "m", "discovery": discovery}])
    assert "s3cretpw" not in str(refused.value)


def test_a_routes_passthrough_paths_default_empty_and_must_be_paths() -> None:
    from gateway.settings import RouteSettings

    assert RouteSettings(name="m").passthrough_paths == []
    assert RouteSettings(name="m", passthrough_paths=["/v1/new"]).passthrough_paths == ["/v1/new"]
    for bad in ("v1/new", "/v1/new?x=1", "/v1 new"):
        with pytest.raises(ValidationError):
            RouteSettings(name="m", passthrough_paths=[bad])


def test_kv_events_settings() -> None:
    from gateway.engines import local_spec

    model = {"name": "m", "model": "/models/m", "kv_events_endpoint": "tcp://*:5557"}
    settings = Settings(models=[model])
    assert local_spec(settings.models[0], "/models/m", True).kv_events == ("tcp://*:5557", None)
    assert local_spec(Settings().models[0], "/m", True).kv_events is None  # off by default
    with pytest.raises(ValueError, match="kv_events_endpoint"):
        Settings(models=[{"name": "m", "model": "/m", "kv_events_endpoint": "ipc:///tmp/x"}])
    with pytest.raises(ValueError, match="needs kv_events_endpoint"):
        Settings(models=[{"name": "m", "model": "/m", "kv_events_replay_endpoint": "tcp://*:5558"}])
    route = Settings(
        routes=[
            {"name": "m", "policy": "kv", "upstreams": ["http://a:1"], "kv_events": {"port": 5557, "replay_port": 5558}}
        ]
    ).routes[0]
    assert route.policy == "kv" and route.kv_events is not None and route.kv_events.port == 5557
    assert Settings().router.kv_max_blocks == 500_000
