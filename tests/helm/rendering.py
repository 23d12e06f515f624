"""Render the chart offline with Helm's own Go SDK (through helm-python-sdk) and index the result.

No cluster and no helm binary: `libhelm_c` runs Helm's template engine, lint and schema checks.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import helm_python
import yaml
from helm_python import _native

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "tokenyard"
CI_VALUES_DIR = CHART_DIR / "ci"
KUBE_VERSION = "1.29.0"
RELEASE = "ty"
NAMESPACE = "llm"
# Kinds from CRDs: no Kubernetes schema for them, so the tests check their shape by hand.
CUSTOM_KINDS = frozenset({"ServiceMonitor", "ScaledObject", "HTTPRoute", "InferencePool", "LeaderWorkerSet"})


def ci_values_files() -> list[Path]:
    return sorted(CI_VALUES_DIR.glob("*-values.yaml"))


def load_values(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    return loaded if loaded else {}


@cache
def chart() -> helm_python.Chart:
    """One loaded chart for the whole session (charts are immutable in the SDK)."""
    return helm_python.Chart.load(CHART_DIR)


def render_templates(
    values: Mapping[str, Any] | None = None,
    *,
    api_versions: Iterable[str] = (),
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> dict[str, str]:
    """Template path -> rendered text, as `helm template --kube-version 1.29.0 --api-versions ...` would give.

    `Chart.render` takes no capabilities, so this calls the library's `helm_render` directly; its
    options JSON also accepts `kube_version` and `api_versions` (Helm's RenderOptions).
    """
    options = {
        "name": release,
        "namespace": namespace,
        "kube_version": f"v{KUBE_VERSION}",
        "api_versions": list(api_versions),
    }
    payload = _native.call_string("helm_render", chart()._raw(), json.dumps(dict(values or {})), json.dumps(options))
    rendered: dict[str, str] = json.loads(payload)
    return rendered


@dataclass
class Rendered:
    """The objects of one rendering, with small look-ups the tests share."""

    objects: list[dict[str, Any]]
    notes: str = ""
    sources: dict[int, str] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [obj for obj in self.of_kind(kind) if obj["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}: {self.names(kind)}"
        return found[0]

    def names(self, kind: str) -> list[str]:
        return [obj["metadata"]["name"] for obj in self.of_kind(kind)]

    def source_of(self, obj: dict[str, Any]) -> str:
        return self.sources.get(id(obj), "?")

    def component(self, kind: str, component: str) -> list[dict[str, Any]]:
        return [
            obj
            for obj in self.of_kind(kind)
            if obj["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
        ]

    @property
    def router(self) -> dict[str, Any]:
        (router,) = self.component("Deployment", "router")
        return router

    @property
    def engines(self) -> list[dict[str, Any]]:
        """Engine workloads: a Deployment per model, a LeaderWorkerSet per multi-node one."""
        return self.component("Deployment", "engine") + self.component("LeaderWorkerSet", "engine")

    def config_of(self, deployment: dict[str, Any]) -> dict[str, Any]:
        """The tokenyard config file that a workload's pods (a multi-node model's leaders) read, parsed."""
        volumes = pod_spec(deployment)["volumes"]
        (config_volume,) = [volume for volume in volumes if volume["name"] == "config"]
        config_map = self.get("ConfigMap", config_volume["configMap"]["name"])
        config: dict[str, Any] = yaml.safe_load(config_map["data"]["config.yaml"])
        return config


# An offline render reaches no cluster, where the chart cannot keep a key it generates, so it refuses to
# generate one (test_security checks that); renders that name no key of their own get this one.
OFFLINE_INTERNAL_KEY = "ty-offline-render-key-0123456789"


def with_internal_key(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """values, plus internalKey.key when they set neither a key nor an existing Secret."""
    out = dict(values or {})
    key = dict(out.get("internalKey") or {})
    if not key.get("key") and not key.get("existingSecret"):
        out["internalKey"] = {**key, "key": OFFLINE_INTERNAL_KEY}
    return out


def render(values: Mapping[str, Any] | None = None, *, offline_key: bool = True, **kwargs: Any) -> Rendered:
    """The objects of a render (with OFFLINE_INTERNAL_KEY unless the values name a key, or offline_key is False)."""
    rendered = Rendered(objects=[])
    for path, text in sorted(render_templates(with_internal_key(values) if offline_key else values, **kwargs).items()):
        if path.endswith("NOTES.txt"):
            rendered.notes = text
            continue
        for obj in yaml.safe_load_all(text):
            if obj:
                rendered.objects.append(obj)
                rendered.sources[id(obj)] = path
    return rendered


def pod_templates(workload: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod templates of a workload, the serving one first: a Deployment's, a LeaderWorkerSet's leader
    and worker templates, or a Pod itself."""
    if workload["kind"] == "LeaderWorkerSet":
        group = workload["spec"]["leaderWorkerTemplate"]
        return [group["leaderTemplate"], group["workerTemplate"]]
    return [workload["spec"]["template"] if workload["kind"] == "Deployment" else workload]


def containers(workload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every container (init ones too) of every pod template of a workload."""
    for template in pod_templates(workload):
        yield from template["spec"].get("initContainers", [])
        yield from template["spec"]["containers"]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = pod_templates(workload)[0]["spec"]
    return spec


def main_container(deployment: dict[str, Any]) -> dict[str, Any]:
    first: dict[str, Any] = pod_spec(deployment)["containers"][0]
    return first
