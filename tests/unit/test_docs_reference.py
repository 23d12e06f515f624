"""docs/reference.md is what docs/gen_reference.py writes from the settings and CLI, so it cannot drift."""

from __future__ import annotations

from pydantic import BaseModel

from docs import gen_reference
from gateway.cli import _parser
from gateway.settings import Settings


def test_committed_page_is_a_fresh_generation() -> None:
    assert gen_reference.PAGE.read_text() == gen_reference.render(), "run: python -m docs.gen_reference"


def _leaf_names(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every field by its dotted name, walked here independently of the generator."""
    names = set()
    for name, field in model.model_fields.items():
        inner, is_list = gen_reference._inner_model(field.annotation)
        dotted = f"{prefix}{name}"
        if inner is None or is_list or field.default_factory is None:
            names.add(dotted)
        if inner is not None:
            names |= _leaf_names(inner, f"{dotted}[]." if is_list else f"{dotted}.")
    return names


def test_every_setting_is_listed_with_a_description() -> None:
    rows = {row.name: row for row in gen_reference.rows(Settings)}
    assert _leaf_names(Settings) == set(rows)
    assert {"limits.max_queue", "routes[].discovery.mode", "models[].lora_adapters[].path"} <= set(rows)
    assert [name for name, row in rows.items() if not row.description] == []
    assert rows["limits.max_queue"].env == "`TOKENYARD_LIMITS__MAX_QUEUE`"
    assert rows["limits.max_queue"].default == "`512`"
    assert rows["routes[].policy"].env == "—"


def test_every_flag_is_listed_with_its_help() -> None:
    page = gen_reference.cli_section()
    serve = _parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    flags = [action for action in serve._actions if action.option_strings and action.dest != "help"]
    assert len(flags) > 15
    for action in flags:
        assert action.help, f"{action.option_strings} has no help"
        assert f"`{max(action.option_strings, key=len)}" in page
