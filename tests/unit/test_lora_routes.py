"""The runtime LoRA routes' own logic over ASGI, with a scripted engine that records loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from engine_adapters.base import ModelInfo
from gateway.engines import lora_engine_args
from gateway.settings import ModelSettings, Settings
from tests.support.scripted_app import MODEL, scripted_client
from tests.support.scripted_engine import ScriptedAdapter

KEY = "sk-lora-test-0123456789"
ADMIN = "sk-lora-admin-9876543210"
LOAD = {"lora_name": "my-lora", "lora_path": "/adapters/my-lora"}


class LoraScripted(ScriptedAdapter):
    """Serves loaded adapters as model names over the scripted base model."""

    def __init__(self) -> None:
        super().__init__(MODEL)
        self.loras: dict[str, str] = {}

    def models(self) -> list[ModelInfo]:
        return [
            *super().models(),
            *(ModelInfo(n, self.max_model_len, root=p, parent=MODEL) for n, p in self.loras.items()),
        ]

    async def load_lora(self, name: str, path: str) -> None:
        self.loras[name] = path

    async def unload_lora(self, name: str) -> None:
        self.loras.pop(name, None)


def settings(enable_lora: bool = True, runtime: bool = True, **fields: Any) -> Settings:
    base = ModelSettings(name=MODEL, model="/unused", enable_lora=enable_lora)
    return Settings(models=[base], allow_runtime_lora_updating=runtime, **fields)


async def test_routes_exist_only_when_enabled() -> None:
    async with scripted_client(settings(runtime=False), LoraScripted()) as client:
        assert (await client.post("/v1/load_lora_adapter", json=LOAD)).status_code == 404


async def test_load_lists_serves_and_unloads() -> None:
    engine = LoraScripted()
    async with scripted_client(settings(), engine) as client:
        loaded = await client.post("/v1/load_lora_adapter", json=LOAD)
        assert loaded.status_code == 200 and "my-lora" in loaded.text
        card = (await client.get("/v1/models/my-lora")).json()
        assert card["parent"] == MODEL and card["root"] == LOAD["lora_path"]
        done = await client.post("/v1/completions", json={"model": "my-lora", "prompt": "hi", "max_tokens": 2})
        assert done.status_code == 200 and done.json()["model"] == "my-lora"
        assert (await client.post("/v1/unload_lora_adapter", json={"lora_name": "my-lora"})).status_code == 200
        assert engine.loras == {}
        gone = await client.post("/v1/completions", json={"model": "my-lora", "prompt": "hi", "max_tokens": 2})
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"


async def test_routes_need_the_admin_key_when_keys_are_set(tmp_path: Path) -> None:
    engine = LoraScripted()
    client_auth, admin = {"authorization": f"Bearer {KEY}"}, {"authorization": f"Bearer {ADMIN}"}
    async with scripted_client(settings(api_keys=KEY), engine) as client:  # no admin key: nobody loads
        for headers, status, code in (({}, 401, "invalid_api_key"), (client_auth, 403, "permission_denied")):
            for path, body in (("/v1/load_lora_adapter", LOAD), ("/v1/unload_lora_adapter", {"lora_name": "my-lora"})):
                refused = await client.post(path, json=body, headers=headers)
                assert refused.status_code == status and refused.json()["error"]["code"] == code
        assert engine.loras == {}
    adapters = tmp_path / "adapters"
    (adapters / "mine").mkdir(parents=True)
    (adapters / "escape").symlink_to(tmp_path)
    secured = settings(api_keys=KEY, auth={"admin_key": ADMIN}, lora_dir=adapters)
    async with scripted_client(secured, engine) as client:
        assert (await client.post("/v1/load_lora_adapter", json=LOAD, headers=client_auth)).status_code == 403
        for outside in ("/etc", str(tmp_path), "../", "escape", str(adapters / "escape" / "x")):
            answer = await client.post(
                "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": outside}, headers=admin
            )
            assert answer.status_code == 400 and answer.json()["error"]["param"] == "lora_path", outside
        loaded = await client.post("/v1/load_lora_adapter", json={**LOAD, "lora_path": "mine"}, headers=admin)
        assert loaded.status_code == 200 and engine.loras == {"my-lora": str((adapters / "mine").resolve())}
        done = await client.post(
            "/v1/completions", json={"model": "my-lora", "prompt": "hi", "max_tokens": 2}, headers=client_auth
        )
        assert done.status_code == 200
        metrics = (await client.get("/metrics", headers=client_auth)).text
        assert "my-lora" not in metrics and f'model="{MODEL}"' in metrics  # counted under its base model
        gone = await client.post("/v1/unload_lora_adapter", json={"lora_name": "my-lora"}, headers=client_auth)
        assert gone.status_code == 403 and engine.loras  # a client key cannot unload the operator's adapters
    async with scripted_client(settings(api_keys=KEY, auth={"admin_key": ADMIN}), engine) as client:
        needs_dir = await client.post("/v1/load_lora_adapter", json={**LOAD, "lora_name": "b"}, headers=admin)
        assert needs_dir.status_code == 400 and "lora_dir" in needs_dir.json()["error"]["message"]


async def test_base_model_must_have_lora_enabled() -> None:
    async with scripted_client(settings(enable_lora=False), LoraScripted()) as client:
        refused = await client.post("/v1/load_lora_adapter", json=LOAD)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "base_model_name"


def test_lora_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="unique"):
        ModelSettings(name="m", model="/p", lora_adapters=[{"name": "m", "path": "/a"}])  # type: ignore[list-item]
    with pytest.raises(ValidationError, match="generate"):
        ModelSettings(name="m", model="/p", kind="embed", enable_lora=True)
    two = ModelSettings(
        name="m", model="/p", max_lora_rank=16, lora_adapters=[{"name": "a", "path": "/a"}, {"name": "b", "path": "/b"}]
    )  # type: ignore[list-item]
    assert lora_engine_args(two) == {"enable_lora": True, "max_loras": 2, "max_lora_rank": 16}
    assert lora_engine_args(ModelSettings(name="m", model="/p")) == {}
