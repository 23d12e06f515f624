from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from gateway.routing.route_key import RouteKey
from gateway.settings import RouteSettings


def test_the_first_key_of_the_file_is_sent_and_a_change_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("# comment\n\nsk-old name=router\nsk-new\n")
    key = RouteKey(None, path)
    assert key.value == "sk-old" and not key.changed()
    path.write_text("sk-new\nsk-old\n")
    assert key.changed() and key.value == "sk-new"


def test_a_file_that_turns_bad_keeps_the_key_and_one_bad_at_start_stops(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("sk-one\n")
    key = RouteKey(None, path)
    path.write_text("# emptied\n")
    assert not key.changed() and key.value == "sk-one"
    path.unlink()
    assert not key.changed() and key.value == "sk-one"
    with pytest.raises(OSError):
        RouteKey(None, path)


def test_a_fixed_key_never_changes() -> None:
    key = RouteKey(SecretStr("sk-fixed"), None)
    assert key.value == "sk-fixed" and not key.watched and not key.changed()


def test_api_key_and_api_key_file_exclude_each_other() -> None:
    with pytest.raises(ValidationError, match="not both"):
        RouteSettings(name="m", api_key=SecretStr("k"), api_key_file=Path("/k"))
