from __future__ import annotations

from pathlib import Path

import pytest

from tests.helm.rendering import CI_VALUES_DIR, Rendered, ci_values_files, load_values, render

_rendered: dict[Path, Rendered] = {}


def rendered_ci(path: Path) -> Rendered:
    """The rendering of one CI values set, done once per session."""
    if path not in _rendered:
        _rendered[path] = render(load_values(path))
    return _rendered[path]


def ci(name: str) -> Rendered:
    """The rendering of helm/tokenyard/ci/<name>-values.yaml."""
    return rendered_ci(CI_VALUES_DIR / f"{name}-values.yaml")


@pytest.fixture(params=ci_values_files(), ids=lambda path: path.name.removesuffix("-values.yaml"))
def ci_values_path(request: pytest.FixtureRequest) -> Path:
    path: Path = request.param
    return path


@pytest.fixture
def ci_rendered(ci_values_path: Path) -> Rendered:
    return rendered_ci(ci_values_path)
