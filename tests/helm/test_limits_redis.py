"""limits.redis: the routers share their buckets and budgets through a Redis whose URL comes from a Secret."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.settings import Settings
from tests.helm.rendering import main_container, render

REDIS = {
    "limits": {"redis": {"existingSecret": "ty-redis", "secretKey": "url", "failure": "closed"}},
    "router": {"extraEnv": [{"name": "EXTRA", "value": "1"}], "extraConfig": {"limits": {"requests_per_minute": 600}}},
}


def test_redis_url_from_the_secret_and_the_backend_in_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered = render(REDIS)
    env = main_container(rendered.router)["env"]
    assert {
        "name": "TOKENYARD_LIMITS__REDIS_URL",
        "valueFrom": {"secretKeyRef": {"name": "ty-redis", "key": "url"}},
    } in env
    assert {"name": "EXTRA", "value": "1"} in env
    config = rendered.config_of(rendered.router)
    assert config["limits"] == {"backend": "redis", "redis_failure": "closed", "requests_per_minute": 600}
    # The router reads that config with the Secret's value in its environment.
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("TOKENYARD_LIMITS__REDIS_URL", "redis://:pw@redis:6379/0")
    limits = Settings(config=path).limits
    assert (limits.backend, limits.redis_failure, limits.requests_per_minute) == ("redis", "closed", 600)
    assert limits.redis_url is not None and limits.redis_url.get_secret_value() == "redis://:pw@redis:6379/0"

    plain = render({})
    assert "limits" not in plain.config_of(plain.router)
    assert "env" not in main_container(plain.router)


def test_the_response_store_url_from_a_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rendered = render({"store": {"existingSecret": "ty-store", "secretKey": "pg"}})
    env = main_container(rendered.router)["env"]
    assert {"name": "TOKENYARD_STORE__URL", "valueFrom": {"secretKeyRef": {"name": "ty-store", "key": "pg"}}} in env
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(rendered.config_of(rendered.router)))
    monkeypatch.setenv("TOKENYARD_STORE__URL", "postgresql://ty:pw@pg:5432/ty")
    url = Settings(config=path).store.url
    assert url is not None and url.get_secret_value() == "postgresql://ty:pw@pg:5432/ty"
