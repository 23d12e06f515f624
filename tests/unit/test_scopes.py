"""Key scopes as the keys file and settings express them, and the route group of each path."""

from __future__ import annotations

import pytest

from gateway.keys import parse_keys_file, setting_entry
from gateway.protocol.paths import route_group
from gateway.scopes import DEFAULT_GROUPS
from gateway.settings import ApiKey


def test_the_keys_file_expresses_every_scope() -> None:
    line = (
        "sk-a-0123456789 name=a owner=team-a models=gemma*,all-MiniLM-L6-v2 groups=inference,admin "
        "expires=2027-01-01T00:00:00Z max_priority=-5 weight=3 meta.cost_center=42"
    )
    (entry,) = parse_keys_file(line)
    scope = entry.scope
    assert (scope.owner, scope.models, scope.groups) == (
        "team-a",
        ("gemma*", "all-MiniLM-L6-v2"),
        {"inference", "admin"},
    )
    assert scope.expires_at == 1798761600.0 and not scope.expired(1798761599.0) and scope.expired(1798761600.0)
    assert (scope.max_priority, scope.weight, dict(scope.metadata)) == (-5, 3, {"cost_center": "42"})
    assert scope.allows_model(["gemma-3-270m"]) and not scope.allows_model(["qwen"])
    assert scope.allows_model(["alias", "gemma-3-270m"])  # the model's own name grants its aliases
    assert not scope.allows_priority(-10) and scope.allows_priority(-5) and scope.allows_priority(0)


def test_a_key_without_scope_keeps_what_every_key_could_do() -> None:
    (entry,) = parse_keys_file("sk-plain-0123456789")
    assert entry.scope.groups == DEFAULT_GROUPS and "admin" not in entry.scope.groups
    assert entry.scope.allows_model(["anything"]) and not entry.scope.expired()
    assert entry.scope.allows_priority(-100) and entry.scope.weight == 1


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ("groups=inference,root", "unknown route group"),
        ("expires=tomorrow", "ISO 8601"),
        ("weight=0", "weight must be"),
        ("weight=sk-secret", "not an integer"),
        ("scopes=all", "unknown option"),
    ],
)
def test_a_bad_scope_names_its_line_and_never_the_key(options: str, reason: str) -> None:
    with pytest.raises(ValueError) as bad:
        parse_keys_file(f"# first\nsk-hidden-0123456789 {options}")
    assert "line 2" in str(bad.value) and reason in str(bad.value)
    assert "sk-" not in str(bad.value)


def test_settings_express_the_same_scopes() -> None:
    key = ApiKey.model_validate(
        {"key": "sk-x", "models": ["m"], "groups": ["usage"], "expires_at": "2027-01-01T00:00:00Z", "weight": 2}
    )
    scope = setting_entry(key).scope
    assert scope.models == ("m",) and scope.groups == {"usage"} and scope.expires_at == 1798761600.0
    with pytest.raises(ValueError):
        ApiKey.model_validate({"key": "sk-x", "groups": ["root"]})


def test_every_path_has_a_route_group() -> None:
    assert route_group("/v1/chat/completions") == "inference"
    assert route_group("/v1/models") == "inference"
    assert route_group("/v1/files") == route_group("/v1/files/file-1/content") == "files_batches"
    assert route_group("/v1/batches/batch_1/cancel") == "files_batches"
    assert route_group("/v1/filesystem") == "inference"  # a prefix matches whole segments only
    assert route_group("/v1/usage") == "usage"
    assert route_group("/admin/keys") == route_group("/admin/usage") == "admin"
    assert route_group("/v1/load_lora_adapter") == "lora"
