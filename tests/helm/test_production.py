"""What a production cluster expects of the chart: spreading, disruption budgets, extra volumes and
environment, scratch limits, pod labels that survive a chart release, the router's own ServiceAccount."""

from __future__ import annotations

from typing import Any

import helm_python
import kubernetes_validate
import pytest

from tests.helm.conftest import ci
from tests.helm.rendering import KUBE_VERSION, Rendered, main_container, pod_spec, pod_templates, render
from tests.helm.test_security import pod_labels, selects

SPREAD = [
    {
        "maxSkew": 1,
        "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "ty"}},
    }
]


def validate(*objects: dict[str, Any]) -> None:
    for obj in objects:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_the_production_set_turns_everything_on() -> None:
    rendered = ci("production")
    kinds = {obj["kind"] for obj in rendered.objects}
    assert {
        "NetworkPolicy",
        "Ingress",
        "HTTPRoute",
        "ServiceMonitor",
        "ScaledObject",
        "InferencePool",
        "LeaderWorkerSet",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
    } <= kinds
    assert len(rendered.of_kind("InferencePool")) == 2 and len(rendered.component("PodDisruptionBudget", "engine")) == 2


def test_pod_templates_leave_out_the_chart_version(ci_rendered: Rendered) -> None:
    # A chart release changes helm.sh/chart; in a pod template it would restart every engine (a model load).
    for workload in ci_rendered.of_kind("Deployment") + ci_rendered.of_kind("LeaderWorkerSet"):
        assert "helm.sh/chart" in workload["metadata"]["labels"]
        for template in pod_templates(workload):
            assert "helm.sh/chart" not in template["metadata"]["labels"]
            assert "app.kubernetes.io/version" not in template["metadata"]["labels"]


def test_topology_spread_for_engines_and_router() -> None:
    rendered = render(
        {"engineDefaults": {"topologySpreadConstraints": SPREAD}, "router": {"topologySpreadConstraints": SPREAD}}
    )
    for deployment in rendered.of_kind("Deployment"):
        assert pod_spec(deployment)["topologySpreadConstraints"] == SPREAD
    validate(*rendered.of_kind("Deployment"))


def test_router_replicas_prefer_different_nodes() -> None:
    def affinity(values: dict[str, Any]) -> Any:
        return pod_spec(render({"router": values}).router).get("affinity")

    soft = affinity({})["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    (term,) = soft
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    router = ci("default").router
    assert selects(term["podAffinityTerm"]["labelSelector"], pod_labels(router))
    assert not any(selects(term["podAffinityTerm"]["labelSelector"], pod_labels(e)) for e in ci("default").engines)
    (hard,) = affinity({"podAntiAffinity": "hard"})["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert hard == term["podAffinityTerm"]
    assert affinity({"podAntiAffinity": "none"}) is None
    own = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["cpu"]}]}]
            }
        }
    }
    assert affinity({"affinity": own}) == own
    validate(render({"router": {"podAntiAffinity": "hard"}}).router)


def pdbs(rendered: Rendered) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in rendered.component("PodDisruptionBudget", "engine")}


def test_every_engine_has_a_pdb_that_cannot_block_a_drain(ci_rendered: Rendered) -> None:
    """One per model, lone pods and KEDA minimums of one or zero included: maxUnavailable of at least one pod
    (a multi-node model: a whole group) and AlwaysAllow, so a drain always proceeds."""
    by_name = pdbs(ci_rendered)
    assert sorted(by_name) == sorted(e["metadata"]["name"] for e in ci_rendered.engines)
    for engine in ci_rendered.engines:
        pdb = by_name[engine["metadata"]["name"]]
        group = engine["spec"]["leaderWorkerTemplate"]["size"] if engine["kind"] == "LeaderWorkerSet" else 1
        assert "minAvailable" not in pdb["spec"]
        assert pdb["spec"]["maxUnavailable"] == group and pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        for template in pod_templates(engine):
            assert selects(pdb["spec"]["selector"], template["metadata"]["labels"])
        assert (
            sum(
                any(selects(pdb["spec"]["selector"], t["metadata"]["labels"]) for t in pod_templates(e))
                for e in ci_rendered.engines
            )
            == 1
        )
        validate(pdb)


def test_engine_pdbs_can_be_tuned_or_turned_off() -> None:
    tuned = render({"engineDefaults": {"podDisruptionBudget": {"maxUnavailable": "50%"}}})
    assert [p["spec"]["maxUnavailable"] for p in pdbs(tuned).values()] == ["50%", "50%"]
    assert pdbs(render({"engineDefaults": {"podDisruptionBudget": {"enabled": False}}})) == {}
    with pytest.raises(helm_python.HelmError, match="maxUnavailable"):
        render({"engineDefaults": {"podDisruptionBudget": {"maxUnavailable": 0}}})


def test_extra_volumes_mounts_and_env_from() -> None:
    volumes = [
        {"name": "templates", "configMap": {"name": "chat-templates"}},
        {"name": "weights", "nfs": {"server": "nfs.example", "path": "/models"}},
    ]
    mounts = [
        {"name": "templates", "mountPath": "/templates", "readOnly": True},
        {"name": "weights", "mountPath": "/models", "readOnly": True},
    ]
    env_from = [{"secretRef": {"name": "tokens"}}, {"configMapRef": {"name": "tuning"}}]
    extra = {"extraVolumes": volumes, "extraVolumeMounts": mounts, "envFrom": env_from}
    rendered = render({"engineDefaults": extra, "router": extra})
    for deployment in rendered.of_kind("Deployment"):
        spec, container = pod_spec(deployment), main_container(deployment)
        assert all(v in spec["volumes"] for v in volumes) and all(m in container["volumeMounts"] for m in mounts)
        assert container["envFrom"] == env_from
    validate(*rendered.of_kind("Deployment"))


def test_scratch_volumes_are_bounded_and_requested(ci_rendered: Rendered) -> None:
    for deployment in ci_rendered.of_kind("Deployment"):
        scratch = {v["name"]: v["emptyDir"] for v in pod_spec(deployment)["volumes"] if v["name"] in {"tmp", "home"}}
        assert set(scratch) == {"tmp", "home"} and all("sizeLimit" in v for v in scratch.values())
        assert "ephemeral-storage" in main_container(deployment)["resources"]["requests"]


def test_router_has_its_own_service_account() -> None:
    rendered = ci("default")
    router_account = pod_spec(rendered.router)["serviceAccountName"]
    assert router_account == "ty-tokenyard-router"
    assert all(pod_spec(e)["serviceAccountName"] == "ty-tokenyard" for e in rendered.engines)
    # In DNS mode no pod gets an API token.
    assert rendered.get("ServiceAccount", router_account)["automountServiceAccountToken"] is False
    assert pod_spec(rendered.router)["automountServiceAccountToken"] is False


# --- exposure: Ingress and HTTPRoute ----------------------------------------------------------


def test_ingress_routes_to_the_router_service() -> None:
    tls = [{"hosts": ["llm.example.com"], "secretName": "llm-tls"}]
    rendered = render(
        {"router": {"ingress": {"enabled": True, "className": "nginx", "hosts": ["llm.example.com"], "tls": tls}}}
    )
    (ingress,) = rendered.of_kind("Ingress")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "llm.example.com" and ingress["spec"]["tls"] == tls
    backend = rule["http"]["paths"][0]["backend"]["service"]
    service = rendered.get("Service", backend["name"])
    assert service["spec"]["ports"][0]["name"] == backend["port"]["name"]
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(rendered.router))
    validate(ingress)
    assert render({}).of_kind("Ingress") == []


def test_httproute_routes_to_the_router_service() -> None:
    from tests.helm.crds import validate_custom_resource

    parent = [{"name": "public", "namespace": "gateways"}]
    rendered = render(
        {
            "router": {
                "httpRoute": {
                    "enabled": True,
                    "parentRefs": parent,
                    "hostnames": ["llm.example.com"],
                    "timeouts": {"request": "0s"},
                }
            }
        }
    )
    (route,) = rendered.of_kind("HTTPRoute")
    assert route["spec"]["parentRefs"] == parent
    (backend,) = route["spec"]["rules"][0]["backendRefs"]
    service = rendered.get("Service", backend["name"])
    assert backend["port"] == service["spec"]["ports"][0]["port"]
    validate_custom_resource(route)


# --- ServiceMonitor and InferencePool ----------------------------------------------------------


def test_servicemonitor_sends_a_key_when_metrics_are_guarded() -> None:
    from tests.helm.crds import validate_custom_resource

    drop = [{"sourceLabels": ["__name__"], "regex": "python_gc_.*", "action": "drop"}]
    extra = [{"targetLabel": "cluster", "replacement": "eu-1"}]
    rendered = render(
        {
            "apiKeys": {"keys": ["sk-0123456789"], "guardMetrics": True},
            "serviceMonitor": {
                "enabled": True,
                "force": True,
                "bearerTokenSecret": {"name": "prom-key"},
                "relabelings": extra,
                "metricRelabelings": drop,
            },
        }
    )
    assert rendered.config_of(rendered.router)["auth"]["guard_metrics"] is True
    monitors = {m["metadata"]["labels"]["app.kubernetes.io/component"]: m for m in rendered.of_kind("ServiceMonitor")}
    (endpoint,) = monitors["router"]["spec"]["endpoints"]
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": {"name": "prom-key", "key": "token"}}
    assert endpoint["relabelings"][-1] == extra[0] and endpoint["metricRelabelings"] == drop
    # The key goes to the router alone: the engines' /metrics asks for none, and they are scraped over plain HTTP.
    (engines,) = monitors["engine"]["spec"]["endpoints"]
    assert "authorization" not in engines and engines["metricRelabelings"] == drop
    for monitor in monitors.values():
        validate_custom_resource(monitor)
    plain = render({"serviceMonitor": {"enabled": True, "force": True}}).of_kind("ServiceMonitor")
    assert all("authorization" not in monitor["spec"]["endpoints"][0] for monitor in plain)


def test_inference_pool_selects_one_models_engines() -> None:
    from tests.helm.crds import validate_custom_resource

    rendered = render(
        {
            "models": [
                {
                    "name": "a",
                    "model": "/m/a",
                    "inferencePool": {
                        "enabled": True,
                        "endpointPicker": {"name": "a-epp", "podSelector": {"app": "a"}},
                    },
                },
                {"name": "b", "model": "/m/b"},
            ]
        }
    )
    (pool,) = rendered.of_kind("InferencePool")
    engines = {rendered.config_of(e)["models"][0]["name"]: e for e in rendered.engines}
    assert selects(pool["spec"]["selector"], pod_labels(engines["a"]))
    assert not selects(pool["spec"]["selector"], pod_labels(engines["b"]))
    assert pool["spec"]["targetPorts"] == [{"number": main_container(engines["a"])["ports"][0]["containerPort"]}]
    assert pool["spec"]["endpointPickerRef"] == {"name": "a-epp", "port": {"number": 9002}}
    validate_custom_resource(pool)
