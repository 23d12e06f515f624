"""The router's settings as the docs list them cannot drift from the settings models: docs/router.md names
every route field (and nothing else), and the `router:` block of configs/router.example.yaml sets every
router setting, each to its default, with a comment saying what it does."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import yaml

from gateway.settings import RouterSettings, RouteSettings

ROOT = Path(__file__).resolve().parents[2]
ROUTER_PAGE = ROOT / "docs" / "router.md"
EXAMPLE = ROOT / "configs" / "router.example.yaml"


def route_field_list() -> str:
    page = ROUTER_PAGE.read_text()
    start = page.index("Route fields:")
    return page[start : page.index("\n\n", start)]


def test_the_router_page_names_every_route_field() -> None:
    named = set(re.findall(r"`([a-z_]+)`", route_field_list()))
    kinds = set(typing.get_args(RouteSettings.model_fields["kind"].annotation))  # `kind`'s values, named too
    assert set(RouteSettings.model_fields) - named == set()
    assert named - set(RouteSettings.model_fields) - kinds == set()


def test_the_example_sets_every_router_setting_to_its_default() -> None:
    text = EXAMPLE.read_text()
    block = yaml.safe_load(text)["router"]
    assert set(block) == set(RouterSettings.model_fields)
    defaults = RouterSettings().model_dump()
    assert {name: value for name, value in block.items() if value != defaults[name]} == {}
    lines = text[text.index("\nrouter:") :].splitlines()[1:]
    uncommented = [line for line in lines if line.startswith("  ") and "#" not in line]
    assert uncommented == []
