"""A model bigger than one node: a LeaderWorkerSet whose leader runs the Ray head and tokenyard, and whose
workers join it. GPU only: checked by rendering and validation here, never run."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from helm_python.errors import HelmError

from tests.helm.crds import validate_custom_resource
from tests.helm.rendering import KUBE_VERSION, Rendered, render
from tests.helm.test_security import selects

BIG = {
    "name": "llama-405b",
    "model": "/var/cache/tokenyard/Llama-3.1-405B-Instruct",
    "gpu": {"count": 8},
    "multiNode": {"nodes": 2},
    "engineArgs": {"max_num_seqs": 64},
}
SMALL = {"name": "small", "model": "/m/small"}


def rendered(**big: Any) -> Rendered:
    return render({"models": [{**BIG, **big}, SMALL]})


def templates(lws: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    group = lws["spec"]["leaderWorkerTemplate"]
    return group["leaderTemplate"], group["workerTemplate"]


def test_a_multi_node_model_is_a_leader_worker_set() -> None:
    result = rendered()
    (lws,) = result.of_kind("LeaderWorkerSet")
    assert lws["metadata"]["name"] == "ty-tokenyard-engine-llama-405b"
    assert result.names("Deployment") == ["ty-tokenyard-engine-small", "ty-tokenyard-router"]  # none for it
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2 and lws["spec"]["replicas"] == 1
    validate_custom_resource(lws)
    for template in templates(lws):  # the pods themselves, against Kubernetes' own PodTemplate schema
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template},
            KUBE_VERSION,
            strict=True,
        )


def test_leader_serves_over_ray_and_workers_join_it() -> None:
    result = rendered()
    (lws,) = result.of_kind("LeaderWorkerSet")
    leader, worker = (t["spec"]["containers"][0] for t in templates(lws))
    script = leader["command"][2]
    assert leader["command"][:2] == ["bash", "-ec"]
    assert "ray start --head --port=6379" in script and "< 16)" in script  # waits for 2 nodes x 8 GPUs
    assert script.splitlines()[-1] == "exec tokenyard serve --config /etc/tokenyard/config.yaml"
    assert worker["command"][2] == 'exec ray start --address="${LWS_LEADER_ADDRESS}:6379" --block --disable-usage-stats'
    # The leader is an engine like any other: probes, the internal key, the port; workers serve no HTTP.
    assert {"startupProbe", "readinessProbe", "livenessProbe", "ports"} <= set(leader)
    assert not {"startupProbe", "readinessProbe", "livenessProbe", "ports"} & set(worker)
    assert any(m["name"] == "internal-key" for m in leader["volumeMounts"])
    assert not any(m["name"] == "internal-key" for m in worker["volumeMounts"])
    for container in (leader, worker):
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    config = result.config_of(lws)
    assert config["models"][0]["engine_args"] == {
        "tensor_parallel_size": 8,
        "pipeline_parallel_size": 2,
        "distributed_executor_backend": "ray",
        "max_num_seqs": 64,
    }
    assert config["auth"]["api_keys_file"] == "/etc/tokenyard/internal/internal-key"


def test_discovery_and_metrics_see_only_leaders() -> None:
    result = rendered()
    (lws,) = result.of_kind("LeaderWorkerSet")
    service = result.get("Service", "ty-tokenyard-engine-llama-405b-headless")
    leader_labels = {**templates(lws)[0]["metadata"]["labels"], "leaderworkerset.sigs.k8s.io/worker-index": "0"}
    worker_labels = {**templates(lws)[1]["metadata"]["labels"], "leaderworkerset.sigs.k8s.io/worker-index": "1"}
    assert selects({"matchLabels": service["spec"]["selector"]}, leader_labels)
    assert not selects({"matchLabels": service["spec"]["selector"]}, worker_labels)
    route = next(r for r in result.config_of(result.router)["routes"] if r["name"] == "llama-405b")
    assert route["discovery"]["dns_name"].startswith(service["metadata"]["name"] + ".")


def test_group_members_reach_each_other_and_keda_scales_groups() -> None:
    result = render(
        {
            "serviceMonitor": {"enabled": True, "force": True},
            "models": [{**BIG, "keda": {"enabled": True}, "inferencePool": {"enabled": True}}, SMALL],
        }
    )
    (lws,) = result.of_kind("LeaderWorkerSet")
    (policy,) = result.component("NetworkPolicy", "engine")
    group_rule = policy["spec"]["ingress"][1]
    assert "ports" not in group_rule  # Ray uses many ports
    assert all(selects(group_rule["from"][0]["podSelector"], t["metadata"]["labels"]) for t in templates(lws))
    (scaled,) = result.of_kind("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"] == {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "name": lws["metadata"]["name"],
    }
    assert "replicas" not in lws["spec"]  # KEDA owns it
    (pool,) = result.of_kind("InferencePool")
    assert pool["spec"]["selector"]["matchLabels"]["leaderworkerset.sigs.k8s.io/worker-index"] == "0"
    budgets = {
        p["metadata"]["name"]: p["spec"]["maxUnavailable"] for p in result.component("PodDisruptionBudget", "engine")
    }
    assert budgets[lws["metadata"]["name"]] == lws["spec"]["leaderWorkerTemplate"]["size"]  # one whole group
    for obj in (lws, scaled, pool):
        validate_custom_resource(obj)


def test_multi_node_needs_gpus() -> None:
    with pytest.raises(HelmError, match="multiNode needs GPUs"):
        rendered(gpu={"count": 0})
