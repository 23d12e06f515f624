"""The chart lints, renders every CI values set into valid Kubernetes 1.29 objects, and wires tokenyard right."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from tests.helm.conftest import ci
from tests.helm.crds import validate_custom_resource
from tests.helm.rendering import (
    CHART_DIR,
    CI_VALUES_DIR,
    CUSTOM_KINDS,
    KUBE_VERSION,
    NAMESPACE,
    Rendered,
    containers,
    load_values,
    main_container,
    pod_spec,
    pod_templates,
    render,
)

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
MONITORING_API = "monitoring.coreos.com/v1"


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


# --- lint, render, validate ------------------------------------------------------------------


def test_ci_values_sets_exist() -> None:
    names = {path.name for path in CI_VALUES_DIR.glob("*-values.yaml")}
    assert {
        "default-values.yaml",
        "multi-model-gpu-values.yaml",
        "cpu-embedded-values.yaml",
        "keys-monitoring-keda-values.yaml",
        "production-values.yaml",
        "gpu-single-pool-values.yaml",
        "llama-70b-tp4-values.yaml",
        "llama-405b-multinode-values.yaml",
    } <= names


def test_lint_passes(ci_values_path: Path) -> None:
    report = helm_python.lint(
        CHART_DIR, load_values(ci_values_path), strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}"
    )
    assert report["errors"] == []
    # Severity 2 is a warning, 3 an error; 1 (info) is only advice such as "icon is recommended".
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_every_object_validates_against_kubernetes_schemas(ci_rendered: Rendered) -> None:
    assert ci_rendered.objects
    for obj in ci_rendered.objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        where = f"{ci_rendered.source_of(obj)}: {obj['kind']} {obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{where}: {'.'.join(map(str, error.path))}: {error.message}")


def test_custom_resources_validate_against_upstream_crds(ci_rendered: Rendered) -> None:
    for obj in ci_rendered.objects:
        if obj["kind"] in CUSTOM_KINDS:
            validate_custom_resource(obj)


def test_only_known_kinds_are_rendered(ci_rendered: Rendered) -> None:
    kinds = {obj["kind"] for obj in ci_rendered.objects}
    assert kinds <= {
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "Service",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "PersistentVolumeClaim",
        "Pod",
        "NetworkPolicy",
        "Ingress",
        "Role",
        "RoleBinding",
        *CUSTOM_KINDS,
    }


def test_names_are_valid_and_unique(ci_rendered: Rendered) -> None:
    seen: set[tuple[str, str]] = set()
    for obj in ci_rendered.objects:
        name = obj["metadata"]["name"]
        pattern = DNS_LABEL if obj["kind"] in {"Service", "Deployment"} else DNS_SUBDOMAIN
        assert pattern.match(name), f"{obj['kind']} name {name!r}"
        assert obj["metadata"]["namespace"] == NAMESPACE
        assert (obj["kind"], name) not in seen
        seen.add((obj["kind"], name))


def test_one_engine_per_model(ci_values_path: Path, ci_rendered: Rendered) -> None:
    values = load_values(ci_values_path)
    models = values.get("models") or load_values(CHART_DIR / "values.yaml")["models"]
    served = sorted(ci_rendered.config_of(engine)["models"][0]["name"] for engine in ci_rendered.engines)
    assert served == sorted(model["name"] for model in models)
    for engine in ci_rendered.engines:
        assert len(ci_rendered.config_of(engine)["models"]) == 1


# --- probes and drain -------------------------------------------------------------------------


def test_probes_use_health_and_ready(ci_rendered: Rendered) -> None:
    for deployment in ci_rendered.of_kind("Deployment"):
        container = main_container(deployment)
        port = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert port["http"] == 8000 and set(port) <= {"http", "kv-events", "kv-replay"}
        assert container["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}


def test_engines_get_minutes_to_load_a_model() -> None:
    for engine in ci("default").engines:
        startup = main_container(engine)["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


def startup_budget_s(container: dict[str, Any]) -> int:
    startup = container["startupProbe"]
    budget: int = startup.get("initialDelaySeconds", 0) + startup["failureThreshold"] * startup["periodSeconds"]
    return budget


def test_engine_rollouts_outlast_the_startup_probe(ci_rendered: Rendered) -> None:
    """A rollout is not marked failed (Helm --wait, Argo CD) while the startup probe still waits for the model."""
    for engine in ci_rendered.component("Deployment", "engine"):  # a LeaderWorkerSet has no such deadline
        assert engine["spec"]["progressDeadlineSeconds"] > startup_budget_s(main_container(engine))


def test_progress_deadline_follows_the_startup_probe_or_a_value() -> None:
    (gemma, _) = ci("default").engines
    assert startup_budget_s(main_container(gemma)) == 1200
    assert gemma["spec"]["progressDeadlineSeconds"] == 1800  # the budget plus 600 s for pull and preparation

    slow = {"startup": {"initialDelaySeconds": 30, "periodSeconds": 20, "failureThreshold": 180}}
    rendered = render(
        {
            "engineDefaults": {"probes": slow},
            "models": [{"name": "a", "model": "/a"}, {"name": "b", "model": "/b", "progressDeadlineSeconds": 7200}],
        }
    )
    deadlines = {
        rendered.config_of(e)["models"][0]["name"]: e["spec"]["progressDeadlineSeconds"] for e in rendered.engines
    }
    assert deadlines == {"a": 30 + 20 * 180 + 600, "b": 7200}
    with pytest.raises(helm_python.HelmRenderError, match="progressDeadlineSeconds 900 is shorter than"):
        render({"engineDefaults": {"progressDeadlineSeconds": 900}})


def test_termination_grace_covers_prestop_and_drain(ci_rendered: Rendered) -> None:
    for deployment in ci_rendered.of_kind("Deployment"):
        config = ci_rendered.config_of(deployment)
        container = main_container(deployment)
        sleep_command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert sleep_command[0] == "sleep"
        pre_stop_s = int(sleep_command[1])
        assert pre_stop_s >= 1, "endpoints need a moment to drop the pod before it stops being ready"
        grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
        assert grace >= config["drain_deadline_s"] + pre_stop_s


def test_drain_values_flow_into_config_and_grace() -> None:
    rendered = render({"drain": {"deadlineSeconds": 120, "preStopSleepSeconds": 10, "extraGraceSeconds": 5}})
    for deployment in rendered.of_kind("Deployment"):
        assert rendered.config_of(deployment)["drain_deadline_s"] == 120
        assert main_container(deployment)["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "10"]
        assert pod_spec(deployment)["terminationGracePeriodSeconds"] == 135


def test_containers_run_tokenyard_serve_with_the_config(ci_rendered: Rendered) -> None:
    for deployment in ci_rendered.component("Deployment", "engine"):
        container = main_container(deployment)
        assert container["command"] == ["tokenyard", "serve", "--config", "/etc/tokenyard/config.yaml"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/etc/tokenyard/config.yaml"]["subPath"] == "config.yaml"  # read once, at start
    # The router's file is in a mounted directory, which the kubelet updates in place: the router reloads it.
    router = main_container(ci_rendered.router)
    assert router["command"] == ["tokenyard", "serve", "--config", "/etc/tokenyard/router/config.yaml"]
    (mount,) = [m for m in router["volumeMounts"] if m["name"] == "config"]
    assert mount == {"name": "config", "mountPath": "/etc/tokenyard/router", "readOnly": True}
    for deployment in ci_rendered.of_kind("Deployment"):
        config = ci_rendered.config_of(deployment)
        assert (config["host"], config["port"]) == ("0.0.0.0", 8000)


# --- router and engines -----------------------------------------------------------------------


def test_router_config_lists_each_headless_service(ci_rendered: Rendered) -> None:
    router_config = ci_rendered.config_of(ci_rendered.router)
    assert router_config["models"] == []
    routes = {route["name"]: route for route in router_config["routes"]}
    for engine in ci_rendered.engines:
        served = ci_rendered.config_of(engine)["models"][0]["name"]
        discovery = routes[served]["discovery"]
        if discovery.get("mode") == "kubernetes":
            service_name, namespace = discovery["service"], discovery["namespace"]
            assert namespace == NAMESPACE
        else:
            service_name, namespace, svc, *domain = discovery["dns_name"].split(".")
            assert (namespace, svc, ".".join(domain)) == (NAMESPACE, "svc", "cluster.local")
        service = ci_rendered.get("Service", service_name)
        assert service["spec"]["clusterIP"] == "None"
        # A multi-node model's Service also selects leaders only, by the label the LWS controller sets.
        selector = {k: v for k, v in service["spec"]["selector"].items() if not k.startswith("leaderworkerset.")}
        assert selector.items() <= pod_templates(engine)[0]["metadata"]["labels"].items()
        if engine["kind"] == "Deployment":
            assert service["spec"]["selector"] == engine["spec"]["selector"]["matchLabels"]
        assert {"port": discovery["port"], "scheme": discovery["scheme"]} == {"port": 8000, "scheme": "http"}
        assert discovery["interval_s"] > 0
        assert routes[served]["policy"] in {"least-loaded", "power-of-two", "session", "prefix", "round-robin", "kv"}


def test_kubernetes_discovery_mode_watches_endpointslices(tmp_path: Path) -> None:
    from gateway.settings import Settings

    rendered = render({"router": {"discoveryMode": "kubernetes"}})
    router_config = rendered.config_of(rendered.router)
    for route in router_config["routes"]:
        discovery = route["discovery"]
        assert "dns_name" not in discovery
        assert (discovery["mode"], discovery["namespace"], discovery["port_name"]) == ("kubernetes", NAMESPACE, "http")
        service = rendered.get("Service", discovery["service"])
        assert service["spec"]["clusterIP"] == "None" and service["spec"]["ports"][0]["name"] == "http"
    config_file = tmp_path / "router.yaml"
    config_file.write_text(yaml.safe_dump(router_config))
    assert Settings(config=config_file).routes[0].discovery.mode == "kubernetes"  # type: ignore[union-attr]

    # List and watch endpointslices (all the router calls) in this namespace, for the router's own ServiceAccount.
    (role,), (binding,) = rendered.of_kind("Role"), rendered.of_kind("RoleBinding")
    assert role["rules"] == [
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    account = pod_spec(rendered.router)["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    assert account == "ty-tokenyard-router" != pod_spec(rendered.engines[0])["serviceAccountName"]
    assert rendered.get("ServiceAccount", account)["automountServiceAccountToken"] is True
    assert pod_spec(rendered.router)["automountServiceAccountToken"] is True  # it needs the token
    assert all(pod_spec(engine)["automountServiceAccountToken"] is False for engine in rendered.engines)
    for obj in (role, binding, rendered.router):
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    # DNS mode (the default) needs neither.
    default = render({})
    assert default.of_kind("Role") == default.of_kind("RoleBinding") == []


def test_engine_selectors_do_not_overlap(ci_rendered: Rendered) -> None:
    deployments = ci_rendered.of_kind("Deployment")
    for deployment in deployments:
        selector = deployment["spec"]["selector"]["matchLabels"].items()
        matching = [d for d in deployments if selector <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert matching == [deployment]


def test_router_service_targets_router_pods(ci_rendered: Rendered) -> None:
    router = ci_rendered.router
    service = ci_rendered.get("Service", router["metadata"]["name"])
    assert service["spec"].get("clusterIP") != "None"
    assert service["spec"]["selector"] == router["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_route_aliases_policies_and_extra_routes() -> None:
    gpu = ci("multi-model-gpu").config_of(ci("multi-model-gpu").router)
    routes = {route["name"]: route for route in gpu["routes"]}
    assert routes["llama-3.1-8b-instruct"]["aliases"] == ["llama-8b"]
    assert routes["llama-3.1-8b-instruct"]["policy"] == "prefix"
    assert routes["gemma-3-270m"]["policy"] == "least-loaded"

    keyed = ci("keys-monitoring-keda")
    routes = {route["name"]: route for route in keyed.config_of(keyed.router)["routes"]}
    assert routes["gemma-3-270m"]["policy"] == "power-of-two"
    assert routes["remote-model"]["upstreams"] == ["http://10.0.0.5:8000", "http://10.0.0.6:8000"]
    assert "discovery" not in routes["remote-model"]


def test_engine_config_carries_the_model_settings() -> None:
    rendered = ci("multi-model-gpu")
    configs = {rendered.config_of(e)["models"][0]["name"]: rendered.config_of(e) for e in rendered.engines}
    llama = configs["llama-3.1-8b-instruct"]["models"][0]
    assert llama == {
        "name": "llama-3.1-8b-instruct",
        "model": "/var/cache/tokenyard/Meta-Llama-3.1-8B-Instruct",
        "kind": "generate",
        "dtype": "bfloat16",
        "max_model_len": 8192,
        "engine_args": {"gpu_memory_utilization": 0.9, "enable_prefix_caching": True},
    }
    assert configs["bge-small-en-v1.5"]["models"][0]["kind"] == "embed"
    # Two GPUs and no explicit tensor_parallel_size: the engine shards the model over both.
    assert configs["Qwen2.5-32B-Instruct"]["models"][0]["engine_args"]["tensor_parallel_size"] == 2


def test_engine_configs_load_as_tokenyard_settings(
    ci_rendered: Rendered, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import os

    from gateway.settings import Settings

    for name in [name for name in os.environ if name.startswith("TOKENYARD_")]:
        monkeypatch.delenv(name)
    for engine in ci_rendered.engines:
        config_file = tmp_path / f"{engine['metadata']['name']}.yaml"
        config_file.write_text(yaml.safe_dump(ci_rendered.config_of(engine)))
        settings = Settings(config=config_file)
        assert settings.host == "0.0.0.0"
        assert len(settings.models) == 1


def test_router_config_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from gateway.settings import Settings

    for name in ("default", "keys-monitoring-keda"):
        rendered = ci(name)
        config_file = tmp_path / f"{name}.yaml"
        config_file.write_text(yaml.safe_dump(rendered.config_of(rendered.router)))
        settings = Settings(config=config_file)
        assert settings.models == []  # the router runs no engine of its own
        # Each engine model is a route found through a headless Service the chart renders in that namespace.
        services = {f"{svc['metadata']['name']}.{svc['metadata']['namespace']}" for svc in rendered.of_kind("Service")}
        discovered = [route for route in settings.routes if route.discovery is not None]
        assert len(discovered) == len(rendered.engines) >= 2
        for route in discovered:
            assert route.discovery is not None and route.discovery.dns_name.endswith(".svc.cluster.local")
            assert route.discovery.dns_name.removesuffix(".svc.cluster.local") in services, route.discovery.dns_name
            assert route.api_key_file is not None  # instances take the router's internal key


# --- GPUs, images, model cache ----------------------------------------------------------------


def test_gpu_values_request_gpus() -> None:
    rendered = ci("multi-model-gpu")
    gpus = {}
    for engine in rendered.engines:
        resources = main_container(engine)["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"]
        gpus[rendered.config_of(engine)["models"][0]["name"]] = resources["limits"]["nvidia.com/gpu"]
        spec = pod_spec(engine)
        assert spec["runtimeClassName"] == "nvidia"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert main_container(engine)["image"] == "registry.example.internal/tokenyard:0.1.0-cuda"
    assert gpus == {"llama-3.1-8b-instruct": 1, "Qwen2.5-32B-Instruct": 2, "gemma-3-270m": 1, "bge-small-en-v1.5": 1}
    # The router needs no GPU.
    assert "nvidia.com/gpu" not in json.dumps(rendered.router)


@pytest.mark.parametrize("name", ["default", "cpu-embedded"])
def test_cpu_values_request_no_gpu(name: str) -> None:
    rendered = ci(name)
    assert "nvidia.com/gpu" not in json.dumps(rendered.objects)
    for engine in rendered.engines:
        assert "runtimeClassName" not in pod_spec(engine)


def test_model_overrides_replace_defaults_even_with_false_or_zero() -> None:
    rendered = render(
        {
            "serviceMonitor": {"enabled": True, "force": True},
            "engineDefaults": {"gpu": {"count": 1}, "keda": {"enabled": True}, "replicaCount": 3},
            "models": [
                {"name": "big", "model": "/models/big"},
                {
                    "name": "small",
                    "model": "/models/small",
                    "gpu": {"count": 0},
                    "keda": {"enabled": False},
                    "replicaCount": 0,
                },
            ],
        }
    )
    engines = {rendered.config_of(e)["models"][0]["name"]: e for e in rendered.engines}
    assert main_container(engines["big"])["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "replicas" not in engines["big"]["spec"]
    assert "nvidia.com/gpu" not in json.dumps(engines["small"])
    assert engines["small"]["spec"]["replicas"] == 0
    assert [so["spec"]["scaleTargetRef"]["name"] for so in rendered.of_kind("ScaledObject")] == [
        engines["big"]["metadata"]["name"]
    ]


def test_model_cache_volume_and_init_container() -> None:
    rendered = ci("multi-model-gpu")
    engines = {rendered.config_of(e)["models"][0]["name"]: e for e in rendered.engines}

    gemma = engines["gemma-3-270m"]
    (init,) = pod_spec(gemma)["initContainers"]
    assert init["command"] == ["python", "-m", "gateway.model_store", "--cache-dir", "/var/cache/tokenyard"]
    assert {"name": "model-cache", "mountPath": "/var/cache/tokenyard"} in init["volumeMounts"]
    assert env_of(main_container(gemma))["TOKENYARD_CACHE_DIR"] == "/var/cache/tokenyard"
    claim = next(v for v in pod_spec(gemma)["volumes"] if v["name"] == "model-cache")["persistentVolumeClaim"]
    pvc = rendered.get("PersistentVolumeClaim", claim["claimName"])
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert pvc["spec"]["storageClassName"] == "fast-ssd"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

    # A path on a shared claim: mounted, but nothing to prepare and no claim of its own.
    llama = engines["llama-3.1-8b-instruct"]
    assert "initContainers" not in pod_spec(llama)
    claim = next(v for v in pod_spec(llama)["volumes"] if v["name"] == "model-cache")["persistentVolumeClaim"]
    assert claim["claimName"] == "model-weights"
    assert rendered.names("PersistentVolumeClaim") == [pvc["metadata"]["name"]]


def test_emptydir_model_cache() -> None:
    rendered = render({"engineDefaults": {"modelCache": {"type": "emptyDir"}}})
    for engine in rendered.engines:
        cache = next(v for v in pod_spec(engine)["volumes"] if v["name"] == "model-cache")
        assert cache["emptyDir"] == {"sizeLimit": "20Gi"}
        assert pod_spec(engine)["initContainers"][0]["name"] == "prepare-model"
    assert rendered.of_kind("PersistentVolumeClaim") == []


@pytest.mark.parametrize("name", ["default", "cpu-embedded", "keys-monitoring-keda"])
def test_without_a_model_cache_the_image_models_are_used(name: str) -> None:
    for engine in ci(name).engines:
        assert "initContainers" not in pod_spec(engine)
        assert "TOKENYARD_CACHE_DIR" not in env_of(main_container(engine))


def test_image_defaults_to_app_version() -> None:
    rendered = ci("default")
    for deployment in rendered.engines:
        assert main_container(deployment)["image"] == "tokenyard:0.1.0"
    # The router and the helm test pod run the slim router image (Dockerfile.router).
    assert main_container(rendered.router)["image"] == "tokenyard-router:0.1.0"
    (test_pod,) = rendered.of_kind("Pod")
    assert test_pod["spec"]["containers"][0]["image"] == "tokenyard-router:0.1.0"


def test_router_image_and_digests() -> None:
    digest = "sha256:" + "a" * 64
    other = "sha256:" + "b" * 64
    rendered = render(
        {
            "image": {"repository": "reg.example/ty", "tag": "0.1.0-cuda", "digest": digest},
            "router": {"image": {"digest": other, "pullPolicy": "Always"}},
            "imagePullSecrets": [{"name": "pull"}],
            "models": [
                {"name": "a", "model": "/m/a"},
                {"name": "b", "model": "/m/b", "image": {"repository": "reg.example/custom", "tag": "1"}},
            ],
        }
    )
    engines = {rendered.config_of(e)["models"][0]["name"]: e for e in rendered.engines}
    assert main_container(engines["a"])["image"] == f"reg.example/ty:0.1.0-cuda@{digest}"
    assert main_container(engines["b"])["image"] == "reg.example/custom:1"  # another repository: not its digest
    router = main_container(rendered.router)
    assert (router["image"], router["imagePullPolicy"]) == (f"reg.example/ty-router:0.1.0@{other}", "Always")
    (test_pod,) = rendered.of_kind("Pod")
    assert test_pod["spec"]["containers"][0]["image"] == router["image"]
    assert test_pod["spec"]["imagePullSecrets"] == [{"name": "pull"}]


# --- API keys ---------------------------------------------------------------------------------


def test_api_keys_secret_is_mounted_when_keys_are_set() -> None:
    rendered = ci("keys-monitoring-keda")
    secret = rendered.get("Secret", "ty-tokenyard-api-keys")
    lines = base64.b64decode(secret["data"]["api-keys"]).decode().splitlines()
    assert lines == load_values(CI_VALUES_DIR / "keys-monitoring-keda-values.yaml")["apiKeys"]["keys"]

    router = rendered.router
    (volume,) = [v for v in pod_spec(router)["volumes"] if v["name"] == "api-keys"]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert volume["secret"]["items"] == [{"key": "api-keys", "path": "api-keys"}]
    mount = next(m for m in main_container(router)["volumeMounts"] if m["name"] == "api-keys")
    assert mount == {"name": "api-keys", "mountPath": "/etc/tokenyard/keys", "readOnly": True}
    assert rendered.config_of(router)["auth"]["api_keys_file"] == "/etc/tokenyard/keys/api-keys"
    # Keys live in the Secret only, never in a ConfigMap or an environment variable.
    for config_map in rendered.of_kind("ConfigMap"):
        assert "ty-ci-key" not in json.dumps(config_map)
    assert "ty-ci-key" not in json.dumps(rendered.of_kind("Deployment"))


def test_hub_token_comes_from_an_existing_secret() -> None:
    rendered = ci("keys-monitoring-keda")
    engines = {rendered.config_of(e)["models"][0]["name"]: e for e in rendered.engines}
    (token,) = [item for item in main_container(engines["gemma-3-270m"])["env"] if item["name"] == "HF_TOKEN"]
    assert token == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-hub", "key": "token"}}}
    # A model may turn it off; the router never gets it; the chart creates no Secret for it.
    assert "HF_TOKEN" not in env_of(main_container(engines["all-MiniLM-L6-v2"]))
    assert "HF_TOKEN" not in env_of(main_container(rendered.router))
    assert rendered.names("Secret") == ["ty-tokenyard-api-keys", "ty-tokenyard-internal-key"]
    for engine in ci("default").engines:
        assert "HF_TOKEN" not in env_of(main_container(engine))


def test_hub_downloads_land_on_the_model_cache() -> None:
    rendered = render(
        {
            "engineDefaults": {"modelCache": {"type": "pvc", "weightsSize": "1Gi"}, "hfTokenSecret": {"name": "hf"}},
            "models": [{"name": "qwen", "model": "Qwen/Qwen2.5-0.5B-Instruct"}],
        }
    )
    (engine,) = rendered.engines
    env = env_of(main_container(engine))
    assert env["HF_HOME"] == "/var/cache/tokenyard/huggingface"
    assert env["TOKENYARD_CACHE_DIR"] == "/var/cache/tokenyard"
    kubernetes_validate.validate(engine, KUBE_VERSION, strict=True)


def test_no_keys_no_secret() -> None:
    rendered = ci("default")
    assert rendered.names("Secret") == ["ty-tokenyard-internal-key"]
    assert "auth" not in rendered.config_of(rendered.router)
    assert all(v["name"] != "api-keys" for v in pod_spec(rendered.router)["volumes"])


def test_existing_secret_is_mounted_not_created() -> None:
    rendered = render({"apiKeys": {"existingSecret": "team-keys", "secretKey": "keys.txt"}})
    assert rendered.names("Secret") == ["ty-tokenyard-internal-key"]
    (volume,) = [v for v in pod_spec(rendered.router)["volumes"] if v["name"] == "api-keys"]
    assert volume["secret"]["secretName"] == "team-keys"
    assert volume["secret"]["items"] == [{"key": "keys.txt", "path": "api-keys"}]
    assert rendered.config_of(rendered.router)["auth"]["api_keys_file"] == "/etc/tokenyard/keys/api-keys"


def test_engines_never_see_the_keys() -> None:
    rendered = ci("keys-monitoring-keda")
    for engine in rendered.engines:
        assert all(v["name"] != "api-keys" for v in pod_spec(engine)["volumes"])
        # Their only key is the internal one (test_security.py).
        assert rendered.config_of(engine)["auth"] == {"api_keys_file": "/etc/tokenyard/internal/internal-key"}


# --- ServiceMonitor (KEDA: test_keda.py) --------------------------------------------------------


def test_servicemonitor_is_off_by_default() -> None:
    assert ci("default").of_kind("ServiceMonitor") == []
    assert render(api_versions=[MONITORING_API]).of_kind("ServiceMonitor") == []


def test_servicemonitor_needs_the_api_or_force() -> None:
    enabled = {"serviceMonitor": {"enabled": True}}
    skipped = render(enabled)
    assert skipped.of_kind("ServiceMonitor") == []
    assert "monitoring.coreos.com/v1" in skipped.notes
    assert len(render(enabled, api_versions=[MONITORING_API]).of_kind("ServiceMonitor")) == 2  # router, engines
    assert len(render({"serviceMonitor": {"enabled": True, "force": True}}).of_kind("ServiceMonitor")) == 2


def test_servicemonitor_shape() -> None:
    rendered = ci("keys-monitoring-keda")
    scraped = []
    for monitor in rendered.of_kind("ServiceMonitor"):
        assert monitor["apiVersion"] == MONITORING_API
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        (endpoint,) = monitor["spec"]["endpoints"]
        assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == ("http", "/metrics", "30s")
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        selector = monitor["spec"]["selector"]["matchLabels"]
        scraped += [s for s in rendered.of_kind("Service") if selector.items() <= s["metadata"]["labels"].items()]
    # The router Service and every engine's headless Service, each once, each with the named port.
    assert len(scraped) == 1 + len(rendered.engines) == len({s["metadata"]["name"] for s in scraped})
    assert all(any(p["name"] == "http" for p in s["spec"]["ports"]) for s in scraped)


# --- router scaling, security, helm test, dashboards -------------------------------------------


def test_router_hpa_and_pdb() -> None:
    rendered = ci("default")
    router = rendered.router
    (hpa,) = rendered.of_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == router["metadata"]["name"]
    assert "replicas" not in router["spec"]
    assert main_container(router)["resources"]["requests"]["cpu"]
    (pdb,) = rendered.component("PodDisruptionBudget", "router")
    assert pdb["spec"]["selector"]["matchLabels"] == router["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]

    small = ci("cpu-embedded")
    assert small.of_kind("HorizontalPodAutoscaler") == [] and small.component("PodDisruptionBudget", "router") == []
    assert small.router["spec"]["replicas"] == 1


def test_router_pdb_lets_a_drain_evict_a_lone_router() -> None:
    """minAvailable 1 over one pod would refuse every eviction; maxUnavailable 1 always allows one."""
    rendered = render({"router": {"replicaCount": 1, "autoscaling": {"enabled": False}}})
    assert rendered.router["spec"]["replicas"] == 1
    (pdb,) = rendered.component("PodDisruptionBudget", "router")
    assert "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    kubernetes_validate.validate(pdb, KUBE_VERSION, strict=True)
    tuned = render({"router": {"podDisruptionBudget": {"maxUnavailable": "50%", "unhealthyPodEvictionPolicy": ""}}})
    (pdb,) = tuned.component("PodDisruptionBudget", "router")
    assert pdb["spec"] == {"maxUnavailable": "50%", "selector": pdb["spec"]["selector"]}
    kubernetes_validate.validate(pdb, KUBE_VERSION, strict=True)


def test_pods_run_as_non_root(ci_rendered: Rendered) -> None:
    workloads = ci_rendered.of_kind("Deployment") + ci_rendered.of_kind("LeaderWorkerSet") + ci_rendered.of_kind("Pod")
    assert workloads
    watches = any(
        route.get("discovery", {}).get("mode") == "kubernetes"
        for route in ci_rendered.config_of(ci_rendered.router)["routes"]
    )
    for workload in workloads:
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        # Only the router, and only when it watches EndpointSlices, gets an API token.
        assert spec["automountServiceAccountToken"] is (watches and workload is ci_rendered.router)
        for container in containers(workload):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            if context.get("readOnlyRootFilesystem"):
                writable = {m["mountPath"] for m in container.get("volumeMounts", [])}
                assert workload["kind"] == "Pod" or {"/tmp", "/home/tokenyard"} <= writable


def test_helm_test_pod_lists_models_through_the_router(ci_rendered: Rendered) -> None:
    (pod,) = ci_rendered.of_kind("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    (container,) = pod["spec"]["containers"]
    env = env_of(container)
    router_service = ci_rendered.get("Service", ci_rendered.router["metadata"]["name"])
    assert env["MODELS_URL"] == (
        f"http://{router_service['metadata']['name']}.{NAMESPACE}.svc.cluster.local:"
        f"{router_service['spec']['ports'][0]['port']}/v1/models"
    )
    served = sorted(ci_rendered.config_of(e)["models"][0]["name"] for e in ci_rendered.engines)
    assert sorted(json.loads(env["EXPECTED_MODELS"])) == served
    # The script is plain Python: it must at least compile.
    compile(container["command"][2], "helm-test", "exec")
    has_keys = "api_keys_file" in ci_rendered.config_of(ci_rendered.router).get("auth", {})
    assert ("KEYS_FILE" in env) == has_keys


def test_dashboard_configmap(ci_values_path: Path, ci_rendered: Rendered) -> None:
    dashboards = [cm for cm in ci_rendered.of_kind("ConfigMap") if cm["metadata"]["name"].endswith("-dashboards")]
    if load_values(ci_values_path).get("dashboards", {}).get("enabled", True) is False:
        assert dashboards == []
        return
    (config_map,) = dashboards
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    files = sorted((CHART_DIR / "dashboards").glob("*.json"))
    assert sorted(config_map["data"]) == [path.name for path in files]
    for path in files:
        assert json.loads(config_map["data"][path.name]) == json.loads(path.read_text())


def test_notes_tell_how_to_reach_the_router(ci_rendered: Rendered) -> None:
    assert f"svc/{ci_rendered.router['metadata']['name']}" in ci_rendered.notes
    assert "/v1/models" in ci_rendered.notes
    for engine in ci_rendered.engines:
        assert ci_rendered.config_of(engine)["models"][0]["name"] in ci_rendered.notes


def test_config_change_rolls_only_the_changed_engine() -> None:
    def checksums(values: dict[str, Any]) -> dict[str, str]:
        rendered = render(values)
        return {
            d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            for d in rendered.of_kind("Deployment")
        }

    base = load_values(CHART_DIR / "values.yaml")["models"]
    changed = [dict(base[0], maxModelLen=1024), base[1]]
    before, after = checksums({}), checksums({"models": changed})
    differing = sorted(name for name in before if before[name] != after[name])
    # The router's routes do not carry max_model_len, so only the gemma engine restarts.
    assert differing == ["ty-tokenyard-engine-gemma-3-270m"]

    # Scaling settings change the pod count, not the pods: no model reload for them.
    scaled = {"serviceMonitor": {"enabled": True, "force": True}}
    scaling = {
        "keda": {"enabled": True, "maxReplicaCount": 9, "routerTrigger": {"threshold": "2"}},
        "replicaCount": 3,
        "progressDeadlineSeconds": 5000,
    }
    assert checksums(scaled) == checksums({**scaled, "engineDefaults": scaling})


# --- names ------------------------------------------------------------------------------------


def test_clashing_model_names_fail() -> None:
    with pytest.raises(helm_python.HelmRenderError, match="same Kubernetes name"):
        render({"models": [{"name": "Gemma", "model": "/a"}, {"name": "gemma", "model": "/b"}]})


def test_long_names_stay_within_dns_limits() -> None:
    long_release = "a-release-name-that-is-quite-long-indeed"
    models = [
        {"name": f"organisation-name/a-very-long-model-name-for-testing-limits-v{n}", "model": "/m"} for n in range(2)
    ]
    rendered = render({"models": models}, release=long_release)
    for kind in ("Service", "Deployment", "ConfigMap"):
        names = rendered.names(kind)
        assert len(set(names)) == len(names), names
        assert all(DNS_LABEL.match(name) for name in names), names
    router_config = rendered.config_of(rendered.router)
    for route in router_config["routes"]:
        assert route["discovery"]["dns_name"].split(".")[0] in rendered.names("Service")
