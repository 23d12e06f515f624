"""The chart carries the router's and engines' newer settings: policy kv with the engines' KV events, LoRA,
tracing, and the engines' own extraConfig. Each rendering is read back through gateway.settings.Settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from gateway.settings import Settings
from tests.helm.conftest import ci
from tests.helm.rendering import CUSTOM_KINDS, KUBE_VERSION, Rendered, main_container, render

GEMMA = {"name": "gemma-3-270m", "model": "builtin:gemma3-270m"}


def settings_of(rendered: Rendered, workload: dict[str, Any], tmp_path: Path) -> Settings:
    """The settings a pod's tokenyard would start with, from the config file the chart gives it."""
    path = tmp_path / f"{workload['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(rendered.config_of(workload)))
    return Settings(config=path)


def valid(rendered: Rendered) -> Rendered:
    for obj in rendered.objects:
        if obj["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    return rendered


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


def test_defaults_render_none_of_the_new_settings() -> None:
    rendered = render()
    router_config = rendered.config_of(rendered.router)
    assert "router" not in router_config and "tracing" not in router_config
    for route in router_config["routes"]:
        assert not {"kv_events", "kv_tokenizer", "lora_adapters", "lora_runtime_load", "max_loras"} & route.keys()
    for engine in rendered.engines:
        config = rendered.config_of(engine)
        assert not {"tracing", "allow_runtime_lora_updating"} & config.keys()
        assert not {"kv_events_endpoint", "enable_lora", "lora_adapters"} & config["models"][0].keys()
        assert [port["name"] for port in main_container(engine)["ports"]] == ["http"]
        assert "env" not in main_container(engine)
    assert "env" not in main_container(rendered.router)
    (engines_policy,) = [p for p in rendered.of_kind("NetworkPolicy") if p["metadata"]["name"].endswith("-engines")]
    assert len(engines_policy["spec"]["ingress"]) == 1


@pytest.mark.parametrize("discovery_mode", ["dns", "kubernetes"])
def test_kv_events_reach_the_router_through_ports_config_and_network_policy(
    discovery_mode: str, tmp_path: Path
) -> None:
    rendered = valid(
        render(
            {
                "router": {
                    "policy": "kv",
                    "discoveryMode": discovery_mode,
                    "kv": {
                        "maxBlocks": 1000,
                        "tokenizeTimeoutSeconds": 1.5,
                        "tokenizeCacheSize": 0,
                        "tokenizeCacheTtlSeconds": 10,
                        "discoveryIntervalSeconds": 3,
                    },
                },
                "models": [
                    {
                        **GEMMA,
                        "kvEvents": {"enabled": True, "port": 6000, "replayPort": 6001},
                        "kvTokenizer": "/models/gemma",
                    }
                ],
            }
        )
    )
    (engine,) = rendered.engines
    model = settings_of(rendered, engine, tmp_path).models[0]
    assert (model.kv_events_endpoint, model.kv_events_replay_endpoint) == ("tcp://*:6000", "tcp://*:6001")
    ports = {port["name"]: port["containerPort"] for port in main_container(engine)["ports"]}
    assert ports == {"http": 8000, "kv-events": 6000, "kv-replay": 6001}

    router = settings_of(rendered, rendered.router, tmp_path)
    (route,) = router.routes
    assert route.policy == "kv" and route.kv_tokenizer == "/models/gemma"
    assert route.kv_events is not None and (route.kv_events.port, route.kv_events.replay_port) == (6000, 6001)
    assert route.discovery is not None and route.discovery.mode == discovery_mode
    assert (router.router.kv_max_blocks, router.router.kv_tokenize_timeout_s) == (1000, 1.5)
    assert (router.router.kv_tokenize_cache_size, router.router.kv_tokenize_cache_ttl_s) == (0, 10)
    assert router.router.kv_discovery_interval_s == 3

    # Discovery gives the pods behind the headless Service; the router subscribes on their IPs.
    (service,) = [s for s in rendered.of_kind("Service") if s["metadata"]["name"].endswith("-headless")]
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "http": 8000,
        "kv-events": 6000,
        "kv-replay": 6001,
    }
    (engines_policy,) = [p for p in rendered.of_kind("NetworkPolicy") if p["metadata"]["name"].endswith("-engines")]
    kv_rule = engines_policy["spec"]["ingress"][1]
    assert [peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for peer in kv_rule["from"]] == ["router"]
    assert [port["port"] for port in kv_rule["ports"]] == [6000, 6001]


def test_kv_events_without_replay_port() -> None:
    rendered = render({"models": [{**GEMMA, "kvEvents": {"enabled": True, "replayPort": 0}}]})
    (engine,) = rendered.engines
    assert "kv_events_replay_endpoint" not in rendered.config_of(engine)["models"][0]
    assert rendered.config_of(rendered.router)["routes"][0]["kv_events"] == {"port": 5557}
    assert [port["name"] for port in main_container(engine)["ports"]] == ["http", "kv-events"]


def test_lora_settings_reach_the_engine_and_its_route(tmp_path: Path) -> None:
    adapters = [{"name": "sql", "path": "/adapters/sql"}, {"name": "chat", "path": "/adapters/chat"}]
    rendered = render(
        {"models": [{**GEMMA, "loraAdapters": adapters, "maxLoras": 2, "maxLoraRank": 16, "loraRuntimeLoad": True}]}
    )
    (engine,) = rendered.engines
    engine_settings = settings_of(rendered, engine, tmp_path)
    model = engine_settings.models[0]
    assert [(a.name, a.path) for a in model.lora_adapters] == [(a["name"], a["path"]) for a in adapters]
    assert (model.enable_lora, model.max_loras, model.max_lora_rank) == (True, 2, 16)
    assert engine_settings.allow_runtime_lora_updating is True and engine_settings.lora_dir == Path("/")
    env = {item["name"]: item for item in main_container(engine).get("env", [])}
    secret = env["TOKENYARD_AUTH__ADMIN_KEY"]["valueFrom"]["secretKeyRef"]  # the router's key is the admin's
    assert secret["key"] == "internal-key" and secret["name"].endswith("-internal-key")

    (route,) = settings_of(rendered, rendered.router, tmp_path).routes
    assert route.lora_adapters == {"sql": "/adapters/sql", "chat": "/adapters/chat"}
    assert (route.lora_runtime_load, route.max_loras) == (True, 2)
    assert set(route.names) == {"gemma-3-270m", "sql", "chat"}


def test_enable_lora_alone_turns_on_lora_without_runtime_updating(tmp_path: Path) -> None:
    rendered = render({"models": [{**GEMMA, "enableLora": True}]})
    engine_settings = settings_of(rendered, rendered.engines[0], tmp_path)
    assert engine_settings.models[0].lora_enabled and not engine_settings.allow_runtime_lora_updating


def test_tracing_sets_the_setting_and_otel_env_on_router_and_engines(tmp_path: Path) -> None:
    extra = {"name": "OTEL_EXPORTER_OTLP_HEADERS", "valueFrom": {"secretKeyRef": {"name": "otel", "key": "headers"}}}
    rendered = valid(
        render(
            {
                "tracing": {
                    "enabled": True,
                    "endpoint": "http://otel-collector.monitoring:4318",
                    "sampler": "parentbased_traceidratio",
                    "samplerArg": "0.1",
                    "extraEnv": [extra],
                },
                "router": {"extraEnv": [{"name": "A", "value": "1"}]},
            }
        )
    )
    for workload in [rendered.router, *rendered.engines]:
        assert settings_of(rendered, workload, tmp_path).tracing.enabled
        container = main_container(workload)
        env = env_of(container)
        assert env["OTEL_SERVICE_NAME"] == workload["metadata"]["name"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.monitoring:4318"
        assert (env["OTEL_TRACES_SAMPLER"], env["OTEL_TRACES_SAMPLER_ARG"]) == ("parentbased_traceidratio", "0.1")
        assert extra in container["env"]
    assert env_of(main_container(rendered.router))["A"] == "1"


def test_tracing_leaves_unset_otel_variables_to_the_sdk() -> None:
    rendered = render({"tracing": {"enabled": True}})
    assert set(env_of(main_container(rendered.router))) == {"OTEL_SERVICE_NAME"}


def test_engine_extra_config_and_tool_parser(tmp_path: Path) -> None:
    rendered = render(
        {
            "engineDefaults": {"extraConfig": {"engine_dead_exit_s": 10, "limits": {"max_in_flight": 64}}},
            "models": [{**GEMMA, "toolParser": "hermes", "extraConfig": {"limits": {"max_queue": 8}}}],
        }
    )
    engine_settings = settings_of(rendered, rendered.engines[0], tmp_path)
    assert engine_settings.engine_dead_exit_s == 10
    assert (engine_settings.limits.max_in_flight, engine_settings.limits.max_queue) == (64, 8)
    assert engine_settings.models[0].tool_parser == "hermes"
    assert engine_settings.auth.api_keys_file is not None  # the chart's own keys stay


@pytest.mark.parametrize(
    "values",
    [
        {"router": {"policy": "kv-ish"}},
        {"router": {"kv": {"maxBlocks": 0}}},
        {"engineDefaults": {"kvEvents": {"port": 70000}}},
        {"models": [{**GEMMA, "loraAdapters": [{"name": "sql"}]}]},
        {"models": [{**GEMMA, "maxLoras": 0}]},
        {"tracing": {"enabeld": True}},
    ],
)
def test_schema_refuses_bad_values(values: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmValuesError, match="specifications of the schema"):
        render(values)


def test_route_config_merges_over_the_chart_route(tmp_path: Path) -> None:
    rendered = render(
        {
            "models": [
                {
                    **GEMMA,
                    "policy": "prefix",
                    "routeConfig": {"hold_timeout_s": 900, "passthrough_paths": ["/v1/score"]},
                }
            ]
        }
    )
    (route,) = settings_of(rendered, rendered.router, tmp_path).routes
    assert (route.hold_timeout_s, route.passthrough_paths, route.policy) == (900, ["/v1/score"], "prefix")
    assert route.discovery is not None and route.api_key_file is not None


def test_the_production_set_routes_by_kv_events_with_lora_and_tracing(tmp_path: Path) -> None:
    rendered = ci("production")
    router = settings_of(rendered, rendered.router, tmp_path)
    assert router.tracing.enabled
    kv_routes = [route for route in router.routes if route.policy == "kv"]
    assert [route.name for route in kv_routes] == ["llama-3.1-8b-instruct"]
    assert kv_routes[0].kv_events is not None and kv_routes[0].lora_runtime_load
    (engines_policy,) = [p for p in rendered.of_kind("NetworkPolicy") if p["metadata"]["name"].endswith("-engines")]
    assert [port["port"] for port in engines_policy["spec"]["ingress"][1]["ports"]] == [5557, 5558]


def test_router_only_keys_do_not_restart_the_engines() -> None:
    def checksum(model: dict[str, Any]) -> str:
        (engine,) = render({"models": [model]}).engines
        return str(engine["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    plain = checksum(GEMMA)
    assert checksum({**GEMMA, "routeConfig": {"hold_timeout_s": 900}, "kvTokenizer": "/models/gemma"}) == plain
    assert checksum({**GEMMA, "kvEvents": {"enabled": True}}) != plain


def test_a_vlm_s_media_rules_reach_its_engine_and_only_its_engine(tmp_path: Path) -> None:
    media = {"allowed_domains": ["images.example.com"], "allowed_networks": ["10.0.0.0/8"], "max_pixels": 1000}
    vlm = {"name": "vlm", "model": "/models/vlm", "engineArgs": {"limit_mm_per_prompt": {"image": 4}}, "media": media}
    rendered = valid(render({"models": [GEMMA, vlm]}))
    by_name = {settings_of(rendered, e, tmp_path).models[0].name: e for e in rendered.engines}
    model = settings_of(rendered, by_name["vlm"], tmp_path).models[0]
    assert model.media.allowed_domains == ["images.example.com"] and model.media.max_pixels == 1000
    assert [str(network) for network in model.media.allowed_networks] == ["10.0.0.0/8"]
    assert model.engine_args["limit_mm_per_prompt"] == {"image": 4}
    text = settings_of(rendered, by_name["gemma-3-270m"], tmp_path).models[0]
    assert text.media.allowed_domains == [] and text.media.local_dir is None  # fetching stays off by default
