"""Engines closed to all but the router: the internal key both sides read, and the NetworkPolicies.

The running proof (an instance refuses a request without the key, the router given it gets through) is
tests/faults/test_internal_key.py."""

from __future__ import annotations

import base64
from typing import Any

import kubernetes_validate

from tests.helm.conftest import ci
from tests.helm.rendering import KUBE_VERSION, Rendered, main_container, pod_spec, pod_templates, render

KEY_PATH = "/etc/tokenyard/internal/internal-key"


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = pod_templates(workload)[0]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) == {"matchLabels"}, selector  # the chart selects by labels only
    return all(labels.get(key) == value for key, value in selector["matchLabels"].items())


def key_volume(workload: dict[str, Any]) -> dict[str, Any]:
    (mount,) = [m for m in main_container(workload)["volumeMounts"] if m["name"] == "internal-key"]
    assert mount == {"name": "internal-key", "mountPath": "/etc/tokenyard/internal", "readOnly": True}  # no subPath
    (volume,) = [v for v in pod_spec(workload)["volumes"] if v["name"] == "internal-key"]
    secret: dict[str, Any] = volume["secret"]
    return secret


def test_engines_require_the_key_the_router_sends() -> None:
    rendered = ci("multi-model-gpu")
    (secret,) = [s for s in rendered.of_kind("Secret") if s["metadata"]["name"] == "ty-tokenyard-internal-key"]
    key = base64.b64decode(secret["data"]["internal-key"]).decode().strip()
    assert key == "ty-ci-internal-key-0123456789"  # given: this render reaches no cluster
    expected = {
        "secretName": "ty-tokenyard-internal-key",
        "defaultMode": 0o440,
        "items": [{"key": "internal-key", "path": "internal-key"}],
    }
    for engine in rendered.engines:
        assert rendered.config_of(engine)["auth"]["api_keys_file"] == KEY_PATH
        assert key_volume(engine) == expected
    routes = rendered.config_of(rendered.router)["routes"]
    assert routes and all(route["api_key_file"] == KEY_PATH and "api_key" not in route for route in routes)
    assert key_volume(rendered.router) == expected


def test_a_given_or_existing_key_is_used() -> None:
    given = render({"internalKey": {"key": "sk-internal-0123456789"}})
    secret = given.get("Secret", "ty-tokenyard-internal-key")
    assert base64.b64decode(secret["data"]["internal-key"]).decode() == "sk-internal-0123456789\n"
    existing = render({"internalKey": {"existingSecret": "engine-key", "secretKey": "key"}})
    assert existing.names("Secret") == []
    assert key_volume(existing.router)["secretName"] == "engine-key"
    assert key_volume(existing.engines[0])["items"] == [{"key": "key", "path": "internal-key"}]


def test_the_key_can_be_turned_off() -> None:
    rendered = render({"internalKey": {"enabled": False}})
    assert rendered.names("Secret") == []
    assert all("auth" not in rendered.config_of(engine) for engine in rendered.engines)
    assert all("api_key_file" not in route for route in rendered.config_of(rendered.router)["routes"])


def policies(rendered: Rendered) -> dict[str, dict[str, Any]]:
    return {
        policy["metadata"]["labels"]["app.kubernetes.io/component"]: policy["spec"]
        for policy in rendered.of_kind("NetworkPolicy")
    }


def test_engines_take_traffic_only_from_the_router_and_the_scrapers() -> None:
    rendered = ci("multi-model-gpu")
    engine_policy = policies(rendered)["engine"]
    assert engine_policy["policyTypes"] == ["Ingress"]
    router_labels = pod_labels(rendered.router)
    assert rendered.engines
    for engine in rendered.engines:
        assert selects(engine_policy["podSelector"], pod_labels(engine))
    assert not selects(engine_policy["podSelector"], router_labels)
    (rule,) = engine_policy["ingress"]
    assert rule["ports"] == [{"port": main_container(rendered.router)["ports"][0]["containerPort"], "protocol": "TCP"}]
    router_peer, *others = rule["from"]
    assert selects(router_peer["podSelector"], router_labels)
    assert not any(selects(router_peer["podSelector"], pod_labels(engine)) for engine in rendered.engines)
    assert others == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    # The helm test pod only talks to the router.
    (test_pod,) = rendered.of_kind("Pod")
    assert not selects(engine_policy["podSelector"], test_pod["metadata"]["labels"])


def test_the_router_is_open_on_its_port_or_to_whom_it_is_told() -> None:
    rendered = ci("default")
    router_policy = policies(rendered)["router"]
    assert selects(router_policy["podSelector"], pod_labels(rendered.router))
    assert not any(selects(router_policy["podSelector"], pod_labels(e)) for e in rendered.engines)
    assert router_policy["ingress"] == [{"ports": [{"port": 8000, "protocol": "TCP"}]}]
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    scrapers = {"podSelector": {"matchLabels": {"app": "prometheus"}}}
    told = render({"networkPolicy": {"routerFrom": [peer], "metricsFrom": [scrapers]}})
    (test_pod,) = told.of_kind("Pod")
    router_from = policies(told)["router"]["ingress"][0]["from"]
    assert router_from[:2] == [peer, scrapers]  # the scrapers too: KEDA's triggers read the router's gauges
    assert selects(router_from[2]["podSelector"], test_pod["metadata"]["labels"])
    assert not selects(router_from[2]["podSelector"], pod_labels(told.engines[0]))
    assert policies(told)["engine"]["ingress"][0]["from"][1:] == [scrapers]
    for policy in told.of_kind("NetworkPolicy"):
        kubernetes_validate.validate(policy, KUBE_VERSION, strict=True)


def test_network_policies_can_be_turned_off() -> None:
    assert render({"networkPolicy": {"enabled": False}}).of_kind("NetworkPolicy") == []


def test_the_first_admin_key_comes_from_a_secret_and_keys_carry_scopes() -> None:
    lines = ["sk-ops-0123456789 name=ops groups=admin,inference", "sk-team-0123456789 name=team models=gemma*"]
    rendered = render({"apiKeys": {"keys": lines, "adminKey": {"existingSecret": "ops-admin", "secretKey": "key"}}})
    env = {item["name"]: item for item in main_container(rendered.router).get("env", [])}
    assert env["TOKENYARD_AUTH__ADMIN_KEY"] == {
        "name": "TOKENYARD_AUTH__ADMIN_KEY",
        "valueFrom": {"secretKeyRef": {"name": "ops-admin", "key": "key"}},
    }
    secret = rendered.get("Secret", "ty-tokenyard-api-keys")
    assert base64.b64decode(secret["data"]["api-keys"]).decode() == "\n".join(lines) + "\n"
    assert "TOKENYARD_AUTH__ADMIN_KEY" not in {e["name"] for e in main_container(render().router).get("env", [])}
