"""Validate the chart's custom resources offline against the upstream CRDs kept, unmodified, in shared/crds/.

Each object is checked against its CRD version's openAPIV3Schema with a Draft 7 validator, and then for
fields the schema does not know: the API server would prune those silently, so a misspelt key would
install without a word and do nothing.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.helm.rendering import ROOT
from tests.support.tools import tool_missing

CRDS_DIR_ENV = "TOKENYARD_CRDS_DIR"


@cache
def crds_dir() -> Path:
    """shared/crds/ beside the repository (as CI has it) or inside it; TOKENYARD_CRDS_DIR overrides both."""
    explicit = os.environ.get(CRDS_DIR_ENV)
    candidates = [Path(explicit)] if explicit else [ROOT.parent / "shared" / "crds", ROOT / "shared" / "crds"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    tool_missing(
        f"no upstream CRDs in {' or '.join(map(str, candidates))} (shared/crds/ is beside the project "
        f"only in CI and on the team's machines); set {CRDS_DIR_ENV} to validate custom resources"
    )


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the openAPIV3Schema of that served version."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(crds_dir().glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served", True):
                schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths in value that a structural schema would prune."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, dict):
        properties = schema.get("properties")
        if properties is None:
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict):
                return [
                    found for key, child in value.items() for found in unknown_fields(child, extra, f"{path}.{key}")
                ]
            return []
        found: list[str] = []
        for key, child in value.items():
            if key not in properties:
                found.append(f"{path}.{key}")
            else:
                found += unknown_fields(child, properties[key], f"{path}.{key}")
        return found
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [
            found
            for index, item in enumerate(value)
            for found in unknown_fields(item, schema["items"], f"{path}[{index}]")
        ]
    return []


def validate_custom_resource(obj: dict[str, Any]) -> None:
    """Fail the test unless obj matches its upstream CRD, with no field the API server would drop."""
    where = f"{obj['kind']} {obj['metadata']['name']}"
    schema = crd_schemas().get((obj["apiVersion"], obj["kind"]))
    if schema is None:
        pytest.fail(f"{where}: no upstream CRD for {obj['apiVersion']} in {crds_dir()}")
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(obj), key=lambda error: list(error.path))
    if errors:
        pytest.fail(f"{where}: " + "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors))
    pruned = unknown_fields(obj["spec"], schema["properties"]["spec"], "spec")
    assert pruned == [], f"{where}: fields not in the CRD: {pruned}"
