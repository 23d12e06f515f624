"""values.schema.json covers every value and rejects bad ones; values.yaml documents every chart key."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import pytest
import yaml

from tests.helm.rendering import CHART_DIR, chart, load_values, render
from tests.support.tools import tool_missing

SCHEMA: dict[str, Any] = json.loads((CHART_DIR / "values.schema.json").read_text())
DEFAULTS = load_values(CHART_DIR / "values.yaml")
# Kubernetes-shaped values: the comment on the key that holds them documents them.
KUBERNETES_SHAPED = {"#/definitions/resources", "#/definitions/probe"}


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = SCHEMA
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def test_schema_is_a_valid_draft7_schema() -> None:
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(SCHEMA)


def test_schema_passes_check_jsonschema_metaschema() -> None:
    """check-jsonschema also checks each `pattern` as an ECMA-262 regex in unicode mode, which Python's re does not."""
    if importlib.util.find_spec("check_jsonschema") is None:
        tool_missing("check-jsonschema is not installed (the dev extra installs it)")
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--check-metaschema", str(CHART_DIR / "values.schema.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_defaults_and_ci_values_satisfy_the_schema(ci_values_path: Path) -> None:
    chart().validate_schema(load_values(ci_values_path))
    jsonschema.Draft7Validator(SCHEMA).validate(chart().merge_values(load_values(ci_values_path)))


def test_every_default_value_is_in_the_schema() -> None:
    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        node = resolve(node)
        if isinstance(value, dict) and "properties" in node:
            for key, child in value.items():
                assert key in node["properties"], f"{path}.{key} is not in values.schema.json"
                walk(child, node["properties"][key], f"{path}.{key}")
        elif isinstance(value, list) and isinstance(node.get("items"), dict):
            for index, item in enumerate(value):
                walk(item, node["items"], f"{path}[{index}]")

    walk(DEFAULTS, SCHEMA, "")


def test_chart_objects_are_closed() -> None:
    """Every schema object with named properties refuses unknown keys, so typos fail at install."""

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "properties" in node:
                assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"
            for key, child in node.items():
                walk(child, f"{path}/{key}")
        elif isinstance(node, list):
            for index, child in enumerate(node):
                walk(child, f"{path}/{index}")

    walk(SCHEMA, "#")


BAD_VALUES = {
    "unknown top-level key": {"replicas": 3},
    "unknown router key": {"router": {"replicas": 3}},
    "unknown model key": {"models": [{"name": "m", "model": "/m", "maxModelLength": 4096}]},
    "model without a name": {"models": [{"model": "/m"}]},
    "wrong type": {"router": {"replicaCount": "two"}},
    "string GPU count": {"engineDefaults": {"gpu": {"count": "1"}}},
    "negative GPU count": {"engineDefaults": {"gpu": {"count": -1}}},
    "unknown policy": {"router": {"policy": "random"}},
    "unknown model kind": {"models": [{"name": "m", "model": "/m", "kind": "rerank"}]},
    "unknown cache type": {"engineDefaults": {"modelCache": {"type": "hostPath"}}},
    "bad log level": {"logLevel": "verbose"},
    "keys not a list": {"apiKeys": {"keys": "secret-key-1"}},
    "key with a space": {"apiKeys": {"keys": ["two words"]}},
    "numeric KEDA threshold": {"engineDefaults": {"keda": {"routerTrigger": {"threshold": 5}}}},
    "KEDA fallback without replicas": {"engineDefaults": {"keda": {"fallback": {"failureThreshold": 3}}}},
    "unknown KEDA fallback behavior": {
        "engineDefaults": {"keda": {"fallback": {"failureThreshold": 3, "replicas": 1, "behavior": "max"}}}
    },
    "hub token as a plain value": {"engineDefaults": {"hfTokenSecret": "hf_abcdefghijklmnop"}},
    "PDB that blocks drains": {"router": {"podDisruptionBudget": {"maxUnavailable": 0}}},
    "negative progress deadline": {"models": [{"name": "m", "model": "/m", "progressDeadlineSeconds": -1}]},
    "bad quantity": {"router": {"resources": {"limits": {"memory": "lots"}}}},
    "bad scrape interval": {"serviceMonitor": {"interval": "fast"}},
}


@pytest.mark.parametrize("values", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_bad_values_are_rejected(values: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmValuesError):
        chart().validate_schema(values)
    # Rendering (what install and template do) refuses them too.
    with pytest.raises(helm_python.HelmValuesError):
        render(values)
    assert helm_python.lint(CHART_DIR, values)["errors"]


def test_values_yaml_documents_every_chart_key() -> None:
    text = (CHART_DIR / "values.yaml").read_text()
    lines = text.splitlines()
    undocumented: list[str] = []

    def documented(line_index: int) -> bool:
        above = lines[line_index - 1].strip() if line_index else ""
        return above.startswith("#") or " # " in lines[line_index]

    def walk(node: yaml.Node, schema: dict[str, Any], path: str) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        schema = resolve(schema)
        properties = schema.get("properties", {})
        for key_node, value_node in node.value:
            key = key_node.value
            if key not in properties:
                continue
            if not documented(key_node.start_mark.line):
                undocumented.append(f"{path}.{key}")
            child = properties[key]
            if child.get("$ref") not in KUBERNETES_SHAPED:
                walk(value_node, child, f"{path}.{key}")

    walk(yaml.compose(text), SCHEMA, "")
    assert undocumented == []
