"""The chart on a real GPU cluster (issue 27): what no schema catches, asserted on the rendered objects of the
CI values sets and the edge cases (helm/tokenyard/ci/: gpu-single-pool, llama-70b-tp4, llama-405b-multinode,
production; tests/helm/refused/: sets the chart must refuse)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from tests.helm.conftest import ci
from tests.helm.netpol import Address, Pod, allowed
from tests.helm.rendering import (
    NAMESPACE,
    Rendered,
    main_container,
    pod_spec,
    pod_templates,
    render,
    with_internal_key,
)

REFUSED_DIR = Path(__file__).parent / "refused"


def by_model(rendered: Rendered) -> dict[str, dict[str, Any]]:
    return {rendered.config_of(e)["models"][0]["name"]: e for e in rendered.engines}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


def startup_budget(container: dict[str, Any]) -> int:
    probe = container["startupProbe"]
    return int(probe.get("initialDelaySeconds", 0) + probe["failureThreshold"] * probe["periodSeconds"])


# --- 1. a router-only change restarts no engine ---------------------------------------------------------

GPU_BASE: dict[str, Any] = {
    "serviceMonitor": {"enabled": True, "force": True},
    "engineDefaults": {"gpu": {"count": 1}},
    "models": [
        {"name": "llama", "model": "/m/llama", "maxModelLen": 8192},
        {"name": "qwen", "model": "/m/qwen", "policy": "session"},
    ],
}


def changed(path: str, value: Any) -> dict[str, Any]:
    """GPU_BASE with one value set, by a dotted path; "models.0.x" sets a key of the first model."""
    values = copy.deepcopy(GPU_BASE)
    *parents, last = path.split(".")
    node: Any = values
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    node[last] = value
    return values


def pod_template_of(rendered: Rendered, name: str) -> dict[str, Any]:
    (workload,) = [w for w in rendered.engines + [rendered.router] if w["metadata"]["name"] == name]
    return pod_templates(workload)[0]


ROUTER_ONLY = {
    "router.policy": "round-robin",
    "models.0.aliases": ["llama-8b"],
    "models.0.policy": "prefix",
    "models.0.routeConfig": {"hold_timeout_s": 900},
    "models.0.kvTokenizer": "/m/llama",
    "models.0.replicaCount": 3,
    "models.0.progressDeadlineSeconds": 9000,
    "models.0.podDisruptionBudget": {"maxUnavailable": 2},
    "models.0.strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
    "models.0.keda": {"enabled": True, "minReplicaCount": 0, "maxReplicaCount": 3},
    "models.0.inferencePool": {"enabled": True, "endpointPicker": {"name": "epp", "podSelector": {"app": "epp"}}},
    "router.drainDeadlineSeconds": 600,
    "router.extraRoutes": [{"name": "remote", "upstreams": ["http://10.0.0.9:8000"]}],
    "router.kv": {"maxBlocks": 1000},
    "apiKeys.keys": ["sk-0123456789abcdef"],
    "networkPolicy.routerFrom": [{"namespaceSelector": {"matchLabels": {"team": "edge"}}}],
}
ROUTE_CHANGES = {
    "router.policy",
    "models.0.aliases",
    "models.0.policy",
    "models.0.routeConfig",
    "models.0.kvTokenizer",
    "models.0.keda",
    "router.extraRoutes",
    "router.kv",
}
ENGINE_ONLY = {
    "models.0.maxModelLen": 4096,
    "models.0.engineArgs": {"enable_prefix_caching": True},
    "models.0.dtype": "float16",
    "models.0.drainDeadlineSeconds": 120,
    "models.0.extraConfig": {"engine_dead_exit_s": 10},
    "models.0.shmSizeLimit": "8Gi",
    "models.0.gpu": {"count": 2},
}
ENGINE_NAMES = ["ty-tokenyard-engine-llama", "ty-tokenyard-engine-qwen"]


@pytest.mark.parametrize("path", ROUTER_ONLY)
def test_a_router_only_change_leaves_every_engine_pod_template_as_it_was(path: str) -> None:
    before, after = render(GPU_BASE), render(changed(path, ROUTER_ONLY[path]))
    for name in ENGINE_NAMES:
        assert pod_template_of(after, name) == pod_template_of(before, name), f"{path} restarts {name}"
    # Route changes reach the router by a reload of its file, not by a restart.
    if path in ROUTE_CHANGES:
        assert pod_template_of(after, "ty-tokenyard-router") == pod_template_of(before, "ty-tokenyard-router")
        assert after.config_of(after.router) != before.config_of(before.router)


@pytest.mark.parametrize("path", ENGINE_ONLY)
def test_an_engine_only_change_restarts_that_engine_alone(path: str) -> None:
    before, after = render(GPU_BASE), render(changed(path, ENGINE_ONLY[path]))
    assert pod_template_of(after, "ty-tokenyard-engine-llama") != pod_template_of(before, "ty-tokenyard-engine-llama")
    assert pod_template_of(after, "ty-tokenyard-engine-qwen") == pod_template_of(before, "ty-tokenyard-engine-qwen")
    assert pod_template_of(after, "ty-tokenyard-router") == pod_template_of(before, "ty-tokenyard-router")


def test_the_engine_checksum_is_the_hash_of_its_config_file() -> None:
    import hashlib

    rendered = render(GPU_BASE)
    for engine in rendered.engines:
        (volume,) = [v for v in pod_spec(engine)["volumes"] if v["name"] == "config"]
        text = rendered.get("ConfigMap", volume["configMap"]["name"])["data"]["config.yaml"]
        body = "\n".join(line for line in text.splitlines() if not line.startswith("# "))
        digest = pod_templates(engine)[0]["metadata"]["annotations"]["checksum/config"]
        assert digest == hashlib.sha256(body.rstrip("\n").encode()).hexdigest()


# --- 2. rollouts that fit the GPUs ----------------------------------------------------------------------


def test_gpu_engines_replace_a_pod_at_a_time_and_cpu_engines_keep_kubernetes_default() -> None:
    pool = ci("gpu-single-pool")
    (engine,) = pool.engines
    assert engine["spec"]["replicas"] == 2
    assert engine["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    for name in ("llama-70b-tp4", "multi-model-gpu"):
        for deployment in ci(name).component("Deployment", "engine"):
            surge = deployment["spec"]["strategy"].get("rollingUpdate", {}).get("maxSurge", 0)
            assert surge == 0, deployment["metadata"]["name"]
    (lws,) = ci("llama-405b-multinode").engines
    assert lws["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert all("strategy" not in e["spec"] for e in ci("default").engines)
    spare = render(changed("models.0.strategy", {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}))
    assert by_model(spare)["llama"]["spec"]["strategy"] == {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


def test_a_misspelt_strategy_is_refused() -> None:
    with pytest.raises(helm_python.HelmError, match="strategy"):
        render(changed("models.0.strategy", {"type": "Rolling"}))


# --- 3-5, 12-13: caches, downloads, start budgets, shm, GPU defaults -----------------------------------


@pytest.mark.parametrize("path", sorted(REFUSED_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_the_refused_values_sets_are_refused_with_what_to_do(path: Path) -> None:
    text = path.read_text()
    match = re.search(r"^# refused: (.+)$", text, re.M)
    assert match, f"{path.name} says what the chart answers in a '# refused:' line"
    with pytest.raises(helm_python.HelmError) as refused:
        render(yaml.safe_load(text))
    assert re.search(match.group(1), str(refused.value)), str(refused.value)


def test_one_pod_may_keep_a_read_write_once_claim() -> None:
    values = {
        "engineDefaults": {"gpu": {"count": 1}, "modelCache": {"type": "pvc", "weightsSize": "16Gi"}},
        "models": [{"name": "m", "model": "org/m"}],
    }
    (engine,) = render(values).engines
    assert engine["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0  # no surge pod to mount it twice


def test_a_hub_model_downloads_into_the_cache_in_an_init_container() -> None:
    rendered = ci("llama-70b-tp4")
    (engine,) = rendered.engines
    (download,) = pod_spec(engine)["initContainers"]
    assert download["name"] == "download-model" and "startupProbe" not in download
    env = env_of(download)
    assert env["MODEL_ID"] == "meta-llama/Llama-3.1-70B-Instruct"
    assert env["HF_HOME"] == "/var/cache/tokenyard/huggingface"
    assert {"name": "model-cache", "mountPath": "/var/cache/tokenyard"} in download["volumeMounts"]
    assert "snapshot_download" in download["command"][2]
    engine_env = env_of(main_container(engine))
    assert engine_env["HF_HOME"] == env["HF_HOME"]
    assert engine_env["VLLM_CACHE_ROOT"] == "/var/cache/tokenyard/vllm"  # compile cache kept across restarts
    assert engine_env["HF_HUB_OFFLINE"] == "1"
    claim = next(v for v in pod_spec(engine)["volumes"] if v["name"] == "model-cache")["persistentVolumeClaim"]
    assert (
        rendered.get("PersistentVolumeClaim", claim["claimName"])["spec"]["resources"]["requests"]["storage"] == "200Gi"
    )


def test_an_empty_dir_cache_counts_in_the_pods_local_storage() -> None:
    values = {
        "engineDefaults": {
            "modelCache": {"type": "emptyDir", "weightsSize": "30Gi", "emptyDir": {"sizeLimit": "40Gi"}}
        },
        "models": [{"name": "m", "model": "org/m"}],
    }
    (engine,) = render(values).engines
    resources = main_container(engine)["resources"]
    assert resources["limits"]["ephemeral-storage"] == "52Gi"  # 12Gi of scratch and the 40Gi cache
    assert resources["requests"]["ephemeral-storage"] == "42Gi"


def test_start_budgets_grow_with_the_weights_and_the_multi_node_join() -> None:
    (small,) = ci("gpu-single-pool").engines
    (big,) = ci("llama-70b-tp4").engines
    (group,) = ci("llama-405b-multinode").engines
    # 1,200 s, plus the weights read at 200 MB/s, plus 600 s for a leader's workers to join.
    assert startup_budget(main_container(small)) == 1200 + 86 + 4  # 16 GiB: 86 s, rounded up to the probe period
    assert startup_budget(main_container(big)) == 1960  # 141 GiB: 757 s
    leader = pod_templates(group)[0]["spec"]["containers"][0]
    assert startup_budget(leader) == 1200 + 4349 + 600 + 1
    assert "startupProbe" not in pod_templates(group)[1]["spec"]["containers"][0]
    # The rollout's deadline covers the download (141 GiB at 50 MB/s) before the start, and 600 s for the pull.
    assert big["spec"]["progressDeadlineSeconds"] == 1960 + 600 + 3028


def test_scale_from_zero_holds_and_cools_down_for_a_whole_cold_start() -> None:
    rendered = ci("llama-405b-multinode")
    (scaled,) = rendered.of_kind("ScaledObject")
    (route,) = rendered.config_of(rendered.router)["routes"]
    cold = 6150 + 600
    assert route["hold_timeout_s"] == cold
    assert scaled["spec"]["cooldownPeriod"] == scaled["spec"]["initialCooldownPeriod"] == cold
    # A model that keeps a pod gets KEDA's 300 s and the router's own hold; a set value wins.
    keda = {"serviceMonitor": {"enabled": True, "force": True}, "engineDefaults": {"keda": {"enabled": True}}}
    rendered = render(keda)
    assert {so["spec"]["cooldownPeriod"] for so in rendered.of_kind("ScaledObject")} == {300}
    assert all("hold_timeout_s" not in r for r in rendered.config_of(rendered.router)["routes"])
    own = {
        **keda,
        "models": [
            {
                "name": "m",
                "model": "/m",
                "keda": {"enabled": True, "minReplicaCount": 0, "cooldownPeriod": 60},
                "routeConfig": {"hold_timeout_s": 90},
            }
        ],
    }
    rendered = render(own)
    (scaled,) = rendered.of_kind("ScaledObject")
    assert scaled["spec"]["cooldownPeriod"] == 60
    assert rendered.config_of(rendered.router)["routes"][0]["hold_timeout_s"] == 90
    with pytest.raises(helm_python.HelmError, match="minReplicaCount 3 is above keda.maxReplicaCount 2"):
        render({**keda, "engineDefaults": {"keda": {"enabled": True, "minReplicaCount": 3, "maxReplicaCount": 2}}})


def test_shm_is_sized_from_the_gpus_and_counted_as_memory() -> None:
    (tp4,) = ci("llama-70b-tp4").engines
    (shm,) = [v for v in pod_spec(tp4)["volumes"] if v["name"] == "shm"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    resources = main_container(tp4)["resources"]
    # GPU defaults per GPU (4 CPUs, 24Gi, a 32Gi limit) times 4, and the 16Gi of /dev/shm on the limit.
    assert resources["requests"] == {"cpu": "16", "memory": "96Gi", "ephemeral-storage": "4Gi", "nvidia.com/gpu": 4}
    assert resources["limits"] == {"memory": "144Gi", "ephemeral-storage": "16Gi", "nvidia.com/gpu": 4}
    for engine in ci("default").engines:
        (shm,) = [v for v in pod_spec(engine)["volumes"] if v["name"] == "shm"]
        assert shm["emptyDir"]["sizeLimit"] == "1Gi"


def test_gpu_engines_take_the_cuda_image_and_only_its_digest() -> None:
    production = ci("production")
    for engine in production.engines:
        image = main_container(engine)["image"]
        assert image == "registry.example.internal/tokenyard:0.1.0-cuda@sha256:" + "1" * 64
    cpu_and_gpu = render(
        {
            "image": {"digest": "sha256:" + "a" * 64},
            "models": [
                {"name": "cpu", "model": "/m/cpu"},
                {"name": "gpu", "model": "/m/gpu", "gpu": {"count": 1}},
                {"name": "own", "model": "/m/own", "gpu": {"count": 1}, "image": {"tag": "0.2.0-cuda"}},
            ],
        }
    )
    images = {name: main_container(e)["image"] for name, e in by_model(cpu_and_gpu).items()}
    assert images == {
        "cpu": "tokenyard:0.1.0@sha256:" + "a" * 64,
        "gpu": "tokenyard:0.1.0-cuda",  # the CPU digest is never pinned onto the CUDA tag
        "own": "tokenyard:0.2.0-cuda",
    }


# --- 6, 11, 15: NetworkPolicies, evaluated --------------------------------------------------------------

PROMETHEUS = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"})
INGRESS = Pod("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
STRANGER = Pod("default", {"app": "curl"})
NEIGHBOUR = Pod(NAMESPACE, {"app": "curl"})
KUBE_DNS = Pod("kube-system", {"k8s-app": "kube-dns"})
OTEL = Pod("monitoring", {"app.kubernetes.io/name": "otel-collector"})
API_SERVER = Address("10.0.0.1")
INTERNET = Address("8.8.8.8")


def pod_of(template: dict[str, Any]) -> Pod:
    return Pod(NAMESPACE, template["metadata"]["labels"])


def test_production_flows_that_must_and_must_not_exist() -> None:
    rendered = ci("production")
    policies = rendered.of_kind("NetworkPolicy")
    router = pod_of(pod_templates(rendered.router)[0])
    engines = by_model(rendered)
    small = pod_of(pod_templates(engines["llama-3.1-8b-instruct"])[0])
    leader, worker = (pod_of(t) for t in pod_templates(engines["llama-3.1-405b-instruct"]))
    epp = Pod(NAMESPACE, {"app": "tokenyard-epp"})
    must = {
        "router <- Prometheus (routerFrom set)": (PROMETHEUS, router, 8000, "TCP"),
        "router <- ingress": (INGRESS, router, 8000, "TCP"),
        "engine <- router": (router, small, 8000, "TCP"),
        "leader <- router": (router, leader, 8000, "TCP"),
        "engine kv events <- router": (router, small, 5557, "TCP"),
        "engine <- endpoint picker": (epp, small, 8000, "TCP"),
        "engine <- Prometheus": (PROMETHEUS, small, 8000, "TCP"),
        "router -> DNS": (router, KUBE_DNS, 53, "UDP"),
        "engine -> DNS": (small, KUBE_DNS, 53, "UDP"),
        "router -> API server": (router, API_SERVER, 443, "TCP"),
        "worker -> leader's Ray": (worker, leader, 6379, "TCP"),
        "leader -> worker": (leader, worker, 40000, "TCP"),
        "engine -> OTLP collector": (small, OTEL, 4318, "TCP"),
        "router -> OTLP collector": (router, OTEL, 4318, "TCP"),
    }
    must_not = {
        "router <- a stranger": (STRANGER, router, 8000, "TCP"),
        "engine <- a neighbour": (NEIGHBOUR, small, 8000, "TCP"),
        "engine <- ingress": (INGRESS, small, 8000, "TCP"),
        "engine <- router on another port": (router, small, 9999, "TCP"),
        "8B engine -> 405B leader": (small, leader, 8000, "TCP"),
        "router -> the internet": (router, INTERNET, 443, "TCP"),
        "engine -> the internet": (small, INTERNET, 443, "TCP"),
        "engine -> API server": (small, API_SERVER, 443, "TCP"),
        "router -> a stranger": (router, STRANGER, 8000, "TCP"),
    }
    assert [name for name, flow in must.items() if not allowed(policies, *flow)] == []
    assert [name for name, flow in must_not.items() if allowed(policies, *flow)] == []


def test_without_egress_rules_pods_may_call_out_and_without_router_from_anyone_may_call_in() -> None:
    rendered = ci("default")
    policies = rendered.of_kind("NetworkPolicy")
    router = pod_of(pod_templates(rendered.router)[0])
    engine = pod_of(pod_templates(rendered.engines[0])[0])
    assert allowed(policies, STRANGER, router, 8000) and allowed(policies, router, engine, 8000)
    assert allowed(policies, engine, INTERNET, 443) and allowed(policies, PROMETHEUS, engine, 8000)
    assert not allowed(policies, NEIGHBOUR, engine, 8000)


def test_a_hub_mirror_is_reachable_only_when_named() -> None:
    mirror = {"ipBlock": {"cidr": "192.0.2.0/24"}}
    values = {
        "networkPolicy": {"egress": {"enabled": True, "hubTo": [mirror]}},
        "engineDefaults": {"modelCache": {"type": "pvc", "weightsSize": "1Gi"}},
        "models": [{"name": "m", "model": "org/m"}],
    }
    rendered = render(values)
    policies = rendered.of_kind("NetworkPolicy")
    engine = pod_of(pod_templates(rendered.engines[0])[0])
    router = pod_of(pod_templates(rendered.router)[0])
    assert allowed(policies, engine, Address("192.0.2.7"), 443)
    assert not allowed(policies, engine, INTERNET, 443) and not allowed(policies, router, Address("192.0.2.7"), 443)
    with pytest.raises(helm_python.HelmError, match="apiServerTo"):
        render({**values, "router": {"discoveryMode": "kubernetes"}})


def test_the_inference_pool_path_is_rendered_end_to_end() -> None:
    pool = {
        "enabled": True,
        "endpointPicker": {"name": "epp", "podSelector": {"app": "epp"}},
        "httpRoute": {"enabled": True, "parentRefs": [{"name": "inference-gateway"}], "timeouts": {"request": "600s"}},
    }
    from tests.helm.crds import validate_custom_resource

    rendered = render({"models": [{"name": "m", "model": "/m", "inferencePool": pool}]})
    (route,) = rendered.component("HTTPRoute", "engine")
    (inference_pool,) = rendered.of_kind("InferencePool")
    assert route["spec"]["rules"][0]["backendRefs"] == [
        {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": inference_pool["metadata"]["name"]}
    ]
    validate_custom_resource(route)
    policies = rendered.of_kind("NetworkPolicy")
    engine = pod_of(pod_templates(rendered.engines[0])[0])
    assert allowed(policies, Pod(NAMESPACE, {"app": "epp"}), engine, 8000)
    with pytest.raises(helm_python.HelmError, match="podSelector"):
        render(
            {
                "models": [
                    {"name": "m", "model": "/m", "inferencePool": {"enabled": True, "endpointPicker": {"name": "e"}}}
                ]
            }
        )
    with pytest.raises(helm_python.HelmError, match="parentRefs"):
        render({"models": [{"name": "m", "model": "/m", "inferencePool": {**pool, "httpRoute": {"enabled": True}}}]})


# --- 8-10, 14 and the low list ----------------------------------------------------------------------------


def test_the_router_and_engines_drain_by_their_own_deadlines() -> None:
    rendered = ci("production")
    assert rendered.config_of(rendered.router)["drain_deadline_s"] == 600
    assert pod_spec(rendered.router)["terminationGracePeriodSeconds"] == 5 + 600 + 10
    for engine in rendered.engines:
        assert rendered.config_of(engine)["drain_deadline_s"] == 30
        assert pod_spec(engine)["terminationGracePeriodSeconds"] == 45


def test_an_offline_render_needs_the_internal_key() -> None:
    with pytest.raises(helm_python.HelmError, match="reaches no cluster"):
        render({}, offline_key=False)
    assert render({"internalKey": {"enabled": False}}, offline_key=False).names("Secret") == []
    assert render(with_internal_key({}), offline_key=False).names("Secret") == ["ty-tokenyard-internal-key"]


def test_the_longest_multi_node_name_leaves_room_for_the_revision_hash() -> None:
    rendered = render(
        {"models": [{"name": "x" * 60, "model": "/m", "gpu": {"count": 8}, "multiNode": {"nodes": 2}}]},
        release="r" * 40,
    )
    (lws,) = rendered.engines
    name = lws["metadata"]["name"]
    assert len(name) <= 50 and re.fullmatch(r"r+-[0-9a-f]{8}", name)  # cut short, with a hash kept unique
    # The worker pods' controller-revision-hash: "<name>-<group index>-<10-character hash>".
    assert len(f"{name}-9-{'h' * 10}") <= 63


def test_low_list_checks() -> None:
    with pytest.raises(helm_python.HelmError, match="parentRefs"):
        render({"router": {"httpRoute": {"enabled": True, "parentRefs": []}}})
    with pytest.raises(helm_python.HelmError, match="minReplicas 5 is above maxReplicas 3"):
        render({"router": {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}})
    with pytest.raises(helm_python.HelmError, match="serviceAccount.name"):
        render({"router": {"discoveryMode": "kubernetes", "serviceAccount": {"create": False}}})
    production = ci("production")
    assert production.notes.count("--timeout") >= 1
    assert "2 nodes x 8 GPUs" in production.notes
    for engine in production.engines:
        assert pod_spec(engine)["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"


def test_helm_test_waits_for_a_ready_engine_of_each_model_that_keeps_one() -> None:
    (pod,) = ci("keys-monitoring-keda").of_kind("Pod")
    env = env_of(pod["spec"]["containers"][0])
    assert env["SERVING_MODELS"] == '["all-MiniLM-L6-v2"]'  # gemma may sit at zero pods
    (pod,) = ci("default").of_kind("Pod")
    assert env_of(pod["spec"]["containers"][0])["SERVING_MODELS"] == '["gemma-3-270m","all-MiniLM-L6-v2"]'
    assert "/ready" in pod["spec"]["containers"][0]["command"][2]


@pytest.mark.parametrize(
    ("weights", "claim", "fits"),
    [("1.5Ti", "1536Gi", True), ("1.5Ti", "1535Gi", False), ("141Gi", "150G", False), ("141G", "150G", True)],
)
def test_weights_and_claims_compare_as_kubernetes_quantities(weights: str, claim: str, fits: bool) -> None:
    values = {
        "engineDefaults": {"modelCache": {"type": "pvc", "weightsSize": weights, "pvc": {"size": claim}}},
        "models": [{"name": "m", "model": "org/m", "gpu": {"count": 1}}],
    }
    if fits:
        (engine,) = render(values).engines
        assert pod_spec(engine)["initContainers"][0]["name"] == "download-model"
    else:
        with pytest.raises(helm_python.HelmError, match="is smaller than modelCache.weightsSize"):
            render(values)


def test_without_the_init_container_the_download_counts_in_the_start_budget() -> None:
    values = {
        "engineDefaults": {"modelCache": {"type": "pvc", "weightsSize": "10G", "download": False}},
        "models": [{"name": "m", "model": "org/m"}],
    }
    (engine,) = render(values).engines
    assert "initContainers" not in pod_spec(engine)
    assert "HF_HUB_OFFLINE" not in env_of(main_container(engine))  # the engine fetches the model itself
    # 1,200 s, the weights read at 200 MB/s (50 s) and downloaded at 50 MB/s (200 s).
    assert startup_budget(main_container(engine)) == 1200 + 50 + 200
    assert engine["spec"]["progressDeadlineSeconds"] == 1450 + 600


def test_the_download_script_runs_against_a_hub_cache(tmp_path: Path) -> None:
    """The init container's script, as rendered, run with this venv's huggingface_hub (the images carry it
    with vLLM) against a hub cache that already holds the model (offline: no network here): it finds the
    snapshot where HF_HOME points, as a resumed download would."""
    import os
    import subprocess
    import sys

    (engine,) = ci("llama-70b-tp4").engines
    (download,) = pod_spec(engine)["initContainers"]
    env = env_of(download)
    env["HF_HOME"] = str(tmp_path)
    repo = tmp_path / "hub" / "models--meta-llama--Llama-3.1-70B-Instruct"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    assert download["command"][:2] == ["python", "-c"]
    result = subprocess.run(
        [sys.executable, "-c", download["command"][2]],
        env={**os.environ, **env, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"downloaded meta-llama/Llama-3.1-70B-Instruct to {snapshot}" in result.stdout
