"""KEDA scaling of the engines: from zero on the router's queue, 1 -> N on vLLM's, and only on series that exist."""

from __future__ import annotations

from typing import Any

import helm_python
import promql_parser
import pytest

from tests.helm.conftest import ci
from tests.helm.crds import validate_custom_resource
from tests.helm.rendering import NAMESPACE, Rendered, render

MONITORING_API = "monitoring.coreos.com/v1"
SCRAPED = {"serviceMonitor": {"enabled": True, "force": True}}


def by_model(rendered: Rendered) -> dict[str, dict[str, Any]]:
    """Model name -> its ScaledObject."""
    engines = {e["metadata"]["name"]: rendered.config_of(e)["models"][0]["name"] for e in rendered.engines}
    return {engines[so["spec"]["scaleTargetRef"]["name"]]: so for so in rendered.of_kind("ScaledObject")}


def selector(query: str) -> tuple[str, dict[str, str]]:
    """The one metric a trigger's query reads, and its equality matchers."""
    found: list[Any] = []
    promql_parser.walk(
        promql_parser.parse(query),
        lambda node: found.append(node) if isinstance(node, promql_parser.VectorSelector) else None,
    )
    (vector,) = found
    matchers = {m.name: m.value for m in vector.matchers.matchers if m.op == promql_parser.MatchOp.Equal}
    return vector.name, matchers


def scraped_services(rendered: Rendered) -> set[str]:
    """Names of the Services the ServiceMonitors have Prometheus scrape, each of which becomes a `service` label."""
    scraped: set[str] = set()
    for monitor in rendered.of_kind("ServiceMonitor"):
        chosen = monitor["spec"]["selector"]["matchLabels"]
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        scraped |= {
            s["metadata"]["name"]
            for s in rendered.of_kind("Service")
            if chosen.items() <= s["metadata"]["labels"].items()
        }
    return scraped


@pytest.mark.parametrize("name", ["default", "cpu-embedded", "multi-model-gpu"])
def test_keda_is_off_by_default(name: str) -> None:
    rendered = ci(name)
    assert rendered.of_kind("ScaledObject") == []
    assert all("replicas" in engine["spec"] for engine in rendered.engines)


def test_generate_model_wakes_on_the_router_queue_and_grows_on_vllms() -> None:
    rendered = ci("keys-monitoring-keda")
    scaled = by_model(rendered)["gemma-3-270m"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (0, 6)
    gemma = rendered.get("Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    assert scaled["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": gemma["metadata"]["name"],
    }
    assert "replicas" not in gemma["spec"], "KEDA owns the replica count"
    triggers = {t["name"]: t for t in scaled["spec"]["triggers"]}
    assert sorted(triggers) == ["engine-queue", "router-in-flight", "router-queue"]
    busy = triggers.pop("router-in-flight")["metadata"]  # keeps the engine up while requests run on it
    assert selector(busy["query"])[0] == "tokenyard_route_in_flight_requests"
    assert (busy["activationThreshold"], int(busy["threshold"]) >= 10**6) == ("0", True)
    for trigger in triggers.values():
        assert trigger["type"] == "prometheus"
        metadata = trigger["metadata"]
        assert all(isinstance(value, str) for value in metadata.values())
        assert metadata["serverAddress"] == "http://kube-prometheus-stack-prometheus.monitoring.svc:9090"
        assert (metadata["threshold"], metadata["activationThreshold"]) == ("8", "0")

    # The router's gauge, by the route's name, from the router Service the ServiceMonitor scrapes.
    router_service = rendered.router["metadata"]["name"]
    routes = [route["name"] for route in rendered.config_of(rendered.router)["routes"]]
    metric, labels = selector(triggers["router-queue"]["metadata"]["query"])
    assert metric == "tokenyard_route_waiting_requests"
    assert labels == {"namespace": NAMESPACE, "service": router_service, "model": "gemma-3-270m"}
    assert labels["model"] in routes
    # vLLM's queue, from this engine's headless Service, by the name the engine serves.
    metric, labels = selector(triggers["engine-queue"]["metadata"]["query"])
    headless = [
        s["metadata"]["name"]
        for s in rendered.of_kind("Service")
        if s["spec"].get("selector") == gemma["spec"]["selector"]["matchLabels"]
    ]
    assert metric == "vllm:num_requests_waiting"
    assert labels == {
        "namespace": NAMESPACE,
        "service": headless[0],
        "model_name": rendered.config_of(gemma)["models"][0]["name"],
    }
    assert {router_service, headless[0]} <= scraped_services(rendered)


def test_embed_model_scales_on_the_router_queue_only() -> None:
    rendered = ci("keys-monitoring-keda")
    scaled = by_model(rendered)["all-MiniLM-L6-v2"]
    trigger, busy = scaled["spec"]["triggers"]
    assert busy["name"] == "router-in-flight"
    metric, labels = selector(trigger["metadata"]["query"])
    assert (trigger["name"], metric, labels["model"]) == (
        "router-queue",
        "tokenyard_route_waiting_requests",
        "all-MiniLM-L6-v2",
    )
    assert "replicas" not in rendered.get("Deployment", scaled["spec"]["scaleTargetRef"]["name"])["spec"]


def test_a_model_whose_triggers_can_have_no_series_gets_no_scaledobject() -> None:
    values = {**SCRAPED, "engineDefaults": {"keda": {"enabled": True, "routerTrigger": {"enabled": False}}}}
    rendered = render(values)
    # Only the generate model has vLLM's queue; the embed engine keeps a fixed count and the notes say why.
    assert sorted(by_model(rendered)) == ["gemma-3-270m"]
    engines = {rendered.config_of(e)["models"][0]["name"]: e for e in rendered.engines}
    assert engines["all-MiniLM-L6-v2"]["spec"]["replicas"] == 1
    assert "replicas" not in engines["gemma-3-270m"]["spec"]
    assert "all-MiniLM-L6-v2 sets keda.enabled but has no trigger" in rendered.notes

    # A query of its own (a metric the operator knows the embed engine has) is taken as given.
    own = {"enabled": True, "query": 'sum(rate(tokenyard_requests_total{model="all-MiniLM-L6-v2"}[1m]))'}
    values["models"] = [
        {
            "name": "all-MiniLM-L6-v2",
            "model": "builtin:all-minilm-l6-v2",
            "kind": "embed",
            "keda": {"engineTrigger": own},
        }
    ]
    (trigger,) = by_model(render(values))["all-MiniLM-L6-v2"]["spec"]["triggers"]
    assert (trigger["name"], trigger["metadata"]["query"]) == ("engine-queue", own["query"])


def test_all_models_with_everything_off_render_no_scaledobject() -> None:
    off = {"enabled": False}
    rendered = render(
        {**SCRAPED, "engineDefaults": {"keda": {"enabled": True, "routerTrigger": off, "engineTrigger": off}}}
    )
    assert rendered.of_kind("ScaledObject") == []
    assert all(engine["spec"]["replicas"] == 1 for engine in rendered.engines)


@pytest.mark.parametrize(
    "monitoring",
    [
        {},
        {"serviceMonitor": {"enabled": False, "force": True}},
        {"serviceMonitor": {"enabled": True}},  # enabled, but the cluster does not serve the API
    ],
    ids=["off", "forced-but-off", "no-api"],
)
def test_keda_without_prometheus_scraping_fails_with_what_to_set(monitoring: dict[str, Any]) -> None:
    with pytest.raises(
        helm_python.HelmRenderError, match=r"keda.enabled needs Prometheus .* serviceMonitor.enabled=true"
    ):
        render({**monitoring, "engineDefaults": {"keda": {"enabled": True}}})


def test_keda_with_the_monitoring_api_renders() -> None:
    rendered = render(
        {"serviceMonitor": {"enabled": True}, "engineDefaults": {"keda": {"enabled": True}}},
        api_versions=[MONITORING_API],
    )
    assert len(rendered.of_kind("ServiceMonitor")) == 2  # the router's and the engines'
    assert sorted(by_model(rendered)) == ["all-MiniLM-L6-v2", "gemma-3-270m"]


def test_fallback_and_behavior_render_only_when_set() -> None:
    plain = render({**SCRAPED, "engineDefaults": {"keda": {"enabled": True}}})
    for scaled in plain.of_kind("ScaledObject"):
        assert "fallback" not in scaled["spec"] and "advanced" not in scaled["spec"]
        validate_custom_resource(scaled)

    set_in_ci = ci("keys-monitoring-keda")
    for scaled in set_in_ci.of_kind("ScaledObject"):
        assert scaled["spec"]["fallback"] == {"failureThreshold": 3, "replicas": 1}
        behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 600
        assert behavior["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 120}]
        validate_custom_resource(scaled)


def test_a_misspelt_behavior_field_is_caught_by_the_crd_check() -> None:
    """The CRD check itself can fail: the API server would drop this field without a word."""
    rendered = render(
        {
            **SCRAPED,
            "engineDefaults": {
                "keda": {"enabled": True, "behavior": {"scaleDown": {"stabilisationWindowSeconds": 600}}}
            },
        }
    )
    with pytest.raises(AssertionError, match="stabilisationWindowSeconds"):
        validate_custom_resource(rendered.of_kind("ScaledObject")[0])
