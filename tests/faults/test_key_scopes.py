"""Key scopes through real processes, in engine mode (the scripted gateway) and router mode (a router over
scripted instances), read with the openai SDK: 404 for a model outside the key's scope (the body an unknown
model gets), 403 for a route group it lacks or a priority above its ceiling, /v1/models filtered, globs and aliases, 401
for an expired key."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.faults.harness import Engine, Fleet, Router
from tests.support import scripted_gateway

KEYS = """\
sk-scoped-0123456789 name=scoped owner=search models=scripted groups=inference max_priority=0
sk-globbed-012345678 name=globbed models=oth*
sk-expired-012345678 name=old expires=2020-01-01T00:00:00Z
sk-open-012345678901 name=open
"""


@pytest.fixture(params=["engine", "router"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(mode, base URL): the scripted gateway serving "scripted" and "other", or a router whose route
    "scripted" (alias "scr") and route "other" each have a scripted instance."""
    keys_file = tmp_path / "keys"
    keys_file.write_text(KEYS)
    auth = {"auth": {"api_keys_file": str(keys_file)}}
    if request.param == "engine":
        proc, url = scripted_gateway.start({**auth, "scripted_models": ["other"]}, {}, tmp_path / "gw.log")
        try:
            yield "engine", url + "/v1"
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        return
    fleet = Fleet(tmp_path)
    try:
        scripted, other = Engine(tmp_path, 4, 1).start(), Engine(tmp_path, 4, 1)
        other.args[other.args.index("--model") + 1] = "other"
        fleet.engines += [scripted, other.start()]
        routes = [
            {"name": "scripted", "upstreams": [scripted.url], "aliases": ["scr"]},
            {"name": "other", "upstreams": [other.url]},
        ]
        router = Router(tmp_path, [], config={"routes": routes, **auth}).start()
        fleet.routers.append(router)
        for engine in fleet.engines:
            engine.wait_ready()
        router.wait_ready()
        yield "router", router.url + "/v1"
    finally:
        fleet.stop()


def _client(base_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)


def _chat(client: openai.OpenAI, model: str) -> str | None:
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    return answer.model


def test_a_key_uses_only_its_models_and_groups(served: tuple[str, str]) -> None:
    mode, base_url = served
    scoped, globbed, opened = (
        _client(base_url, f"sk-{name}") for name in ("scoped-0123456789", "globbed-012345678", "open-012345678901")
    )
    assert {"scripted", "other"} <= {model.id for model in opened.models.list()}
    listed = {model.id for model in scoped.models.list()}
    assert "scripted" in listed and "other" not in listed
    assert {model.id for model in globbed.models.list()} & {"scripted", "other"} == {"other"}

    assert _chat(scoped, "scripted")
    if mode == "router":  # granting a model grants its aliases
        assert _chat(scoped, "scr")
    with pytest.raises(openai.NotFoundError) as hidden:
        _chat(scoped, "other")
    with pytest.raises(openai.NotFoundError) as unknown:
        _chat(scoped, "no-such-model")
    assert isinstance(unknown.value.body, dict)
    assert hidden.value.body == {**unknown.value.body, "message": "The model `other` does not exist."}
    assert hidden.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        scoped.models.retrieve("other")
    assert scoped.models.retrieve("scripted").id == "scripted"

    with pytest.raises(openai.PermissionDeniedError) as denied:
        scoped.get("/usage", cast_to=object)
    assert denied.value.code == "permission_denied" and denied.value.status_code == 403
    assert "sk-" not in str(denied.value.body)
    assert isinstance(opened.get("/usage", cast_to=object), dict)

    messages: Any = [{"role": "user", "content": "hi"}]
    for asked in ({"extra_body": {"priority": -1}}, {"extra_headers": {"x-priority": "-5"}}):
        with pytest.raises(openai.PermissionDeniedError) as urgent:  # above the key's priority ceiling
            scoped.chat.completions.create(model="scripted", messages=messages, max_tokens=2, **asked)
        assert urgent.value.code == "permission_denied"
    assert scoped.chat.completions.create(model="scripted", messages=messages, max_tokens=2, extra_body={"priority": 3})

    assert _chat(globbed, "other")
    with pytest.raises(openai.NotFoundError):
        _chat(globbed, "scripted")


def test_an_expired_key_is_told_so(served: tuple[str, str]) -> None:
    base_url = served[1]
    with pytest.raises(openai.AuthenticationError) as expired:
        _chat(_client(base_url, "sk-expired-012345678"), "scripted")
    assert "expired" in expired.value.message
    with pytest.raises(openai.AuthenticationError) as wrong:
        _chat(_client(base_url, "sk-wrong-0123456789"), "scripted")
    assert "expired" not in wrong.value.message
