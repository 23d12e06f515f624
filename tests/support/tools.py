"""What a test does when an outside tool it needs (redis-server, hadolint, check-jsonschema, the CRDs) is
missing: on a developer's machine it is skipped, with a line saying how to install the tool; in CI (`.ci/run`
exports TOKENYARD_CI=1; CI services set CI=true) it fails, so a CI machine without the tool cannot pass the
suite silently."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

CI_VARIABLES = ("TOKENYARD_CI", "CI")


def in_ci() -> bool:
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes") for name in CI_VARIABLES)


def tool_missing(why: str) -> NoReturn:
    """Skip the test, or fail it in CI."""
    if in_ci():
        pytest.fail(f"{why} (CI must have it)", pytrace=False)
    pytest.skip(why)
